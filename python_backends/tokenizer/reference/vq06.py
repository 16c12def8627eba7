"""Original vq06: 30 s pieces, Whisper log-mel per piece, batch-1 onnxruntime calls with
Step-Audio's session settings (1 intra-op thread, ORT_ENABLE_ALL), positional inputs."""
from __future__ import annotations

import sys
import types

import numpy as np
import onnxruntime as ort


def _whisper_log_mel():
    """s3tokenizer's log-mel is bit-identical to openai-whisper's; its module imports
    torchaudio at top level only for file loading, which cannot load beside CPU torch."""
    try:
        import torchaudio  # noqa: F401
    except Exception:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    from s3tokenizer import log_mel_spectrogram

    return log_mel_spectrogram


class ReferenceVq06:
    def __init__(self, onnx_path: str):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.log_mel = _whisper_log_mel()

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        import torch

        tokens: list[int] = []
        for start in range(0, len(audio), 480000):
            piece = audio[start:start + 480000]
            if len(piece) < 480:
                continue
            mel = self.log_mel(torch.from_numpy(piece), n_mels=128)[None].numpy()
            inputs = self.session.get_inputs()
            out = self.session.run(None, {inputs[0].name: mel,
                                          inputs[1].name: np.array([mel.shape[2]], np.int32)})[0]
            tokens.extend(out.flatten().tolist())
        duration = round(len(audio) / 16000, 2)
        if abs(len(tokens) - duration * 25) > 2:
            raise AssertionError(f"vq06 gave {len(tokens)} tokens for {duration} s")
        return np.asarray(tokens, np.int32)
