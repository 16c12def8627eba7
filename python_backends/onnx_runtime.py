"""onnxruntime sessions as the tokenizer models open them (shared by vq02 and vq06)."""
from __future__ import annotations

import onnxruntime as ort


def onnx_session(path: str, device: str = "cpu", num_threads: int = 0) -> ort.InferenceSession:
    """Session on `device` ("cpu" or "cuda:N"), all graph optimisations, no spinning threads."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle pool threads must not spin: they would steal the cores torch (vq02) is using
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if num_threads:
        opts.intra_op_num_threads = num_threads
    if device.startswith("cuda"):
        index = device.split(":")[1] if ":" in device else "0"
        providers = [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), opts, providers=providers)
