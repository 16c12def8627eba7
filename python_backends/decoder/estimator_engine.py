"""The flow's DiT estimator outside PyTorch: the graph build_scripts/export_flow_onnx.py writes,
run by ONNX Runtime in process or by an engine model (TensorRT plan) over BLS.

Both stand-ins have `DiT.forward`'s signature and take the DiT's place as
`flow.decoder.estimator`, so `solve_euler` runs them unchanged: one call per Euler step on the
2B guidance rows. The graph is float32; inputs of another dtype (a bfloat16 flow) are cast up
and the velocity is cast back to the caller's dtype and device. `OnnxEstimator` feeds host
arrays, so every step copies its inputs to the host and the velocity back (B·80·T floats each
way) even with the CUDA provider; `EngineEstimator` hands CUDA tensors over by DLPack.

A graph is served only with its JSON sidecar, and only when the sidecar names the weights
(cosyvoice.yaml + flow.pt) being served and records a passed export check.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engines.profiles import FLOW_INPUTS
from ..file_io import combined_sha256, onnx_sidecar_path, sha256_file
from ..onnx_runtime import onnx_session
from ..settings import EditxSettings
from .flow import COSYVOICE_YAML_FILE, FLOW_FILE

FLOW_ENGINES = ("torch", "onnx")
OUTPUT = "estimator_out"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENGINE_DIR = PROJECT_ROOT / "build" / "engines"
EXPORT_HINT = "python -m build_scripts.export_flow_onnx --cosyvoice <CosyVoice dir> --out {path}"


def weights_digest(cosyvoice_dir: str | Path) -> tuple[str, dict[str, str]]:
    """(combined sha256, {file name: sha256}) of the files the estimator graph is made from."""
    root = Path(cosyvoice_dir)
    per_file = {name: sha256_file(root / name) for name in (COSYVOICE_YAML_FILE, FLOW_FILE)}
    return combined_sha256(per_file), per_file


def default_onnx_path(digest: str) -> Path:
    return ENGINE_DIR / f"flow_estimator.{digest[:12]}.onnx"


def checked_onnx_path(cosyvoice_dir: str | Path, onnx_path: str | Path | None) -> Path:
    """The graph to serve for these weights; refuses a missing file or sidecar, a sidecar naming
    other weights, a failed check, or a file changed since it was written."""
    digest, _ = weights_digest(cosyvoice_dir)
    path = default_onnx_path(digest) if onnx_path is None else Path(onnx_path)
    if not path.is_absolute():
        path = PROJECT_ROOT / path
    hint = EXPORT_HINT.format(path=path)
    if not path.is_file():
        raise FileNotFoundError(f"flow estimator ONNX {path} does not exist; export it with `{hint}`")
    try:
        meta = json.loads(onnx_sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: its sidecar {onnx_sidecar_path(path)} is missing or unreadable "
                         f"({exc}); re-export with `{hint}`") from None
    recorded = str(meta.get("weights", {}).get("sha256"))
    problems = []
    if recorded != digest:
        problems.append(f"it was exported from weights {recorded[:12]}, not from the configured "
                        f"weights {digest[:12]}")
    if meta.get("check", {}).get("passed") is not True:
        problems.append("its export check did not pass")
    if meta.get("onnx_file", {}).get("bytes") != path.stat().st_size:
        problems.append("the file changed after its sidecar was written")
    if problems:
        raise ValueError(f"refusing flow estimator ONNX {path}: {'; '.join(problems)}; "
                         f"re-export with `{hint}`")
    return path


class OnnxEstimator(nn.Module):
    """A parameterless stand-in for `DiT` whose forward runs an onnxruntime session."""

    def __init__(self, path: str | Path, device: str = "cpu", num_threads: int = 0):
        super().__init__()
        self.path = Path(path)
        self.session = onnx_session(str(self.path), device, num_threads)
        names = tuple(i.name for i in self.session.get_inputs())
        if sorted(names) != sorted(FLOW_INPUTS):
            raise ValueError(f"{self.path}: inputs {names}, expected {FLOW_INPUTS}")
        if device.startswith("cuda") and "CUDAExecutionProvider" not in self.session.get_providers():
            raise RuntimeError(f"{self.path}: onnxruntime has no CUDA provider here (providers: "
                               f"{self.session.get_providers()}); install onnxruntime-gpu or serve "
                               "the flow with flow_engine='torch'")

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                spks: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """As `DiT.forward`: x, mu, cond [B, 80, T]; mask [B, 1, T]; t [B]; spks [B, 80]."""
        feeds = {name: np.ascontiguousarray(value.detach().to("cpu", torch.float32).numpy())
                 for name, value in zip(FLOW_INPUTS, (x, mask, mu, t, spks, cond))}
        velocity = self.session.run([OUTPUT], feeds)[0]
        return torch.from_numpy(velocity).to(device=x.device, dtype=x.dtype)


class EngineEstimator(nn.Module):
    """A parameterless stand-in for `DiT` whose forward is a call to the `flow_estimator` engine
    model through `client` (python_backends.serving.engine_client.EngineClient)."""

    def __init__(self, client):
        super().__init__()
        self.client = client

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                spks: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        inputs = {name: value.detach().to(torch.float32).contiguous()
                  for name, value in zip(FLOW_INPUTS, (x, mask, mu, t, spks, cond))}
        velocity = torch.as_tensor(self.client.infer(inputs, [OUTPUT])[OUTPUT])
        return velocity.to(device=x.device, dtype=x.dtype)


def estimator_from_settings(settings: EditxSettings) -> OnnxEstimator:
    """The estimator for `flow_engine` "onnx" ("torch" keeps the DiT the flow loads)."""
    if settings.flow_engine != "onnx":
        raise ValueError(f"flow_engine must be one of {', '.join(FLOW_ENGINES)}, not "
                         f"'{settings.flow_engine}'")
    path = checked_onnx_path(settings.cosyvoice_dir, settings.flow_onnx)
    return OnnxEstimator(path, settings.device, settings.num_threads)
