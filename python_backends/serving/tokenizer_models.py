"""What the tokenizer's Triton models (preprocess, vq02, vq06) share: the warm-up clip, the
tokenizer instance on this instance's device, and one batched call per `execute`."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from . import engine_client
from .model_config import load_settings
from .triton_io import read_audio, respond_batched, tensor


def warmup_audio(seconds: float = 1.0, sample_rate: int = 16000) -> np.ndarray:
    """Deterministic noise to run once in initialize(): the first real request then does not
    pay for numba compilation, onnxruntime's first-run setup or torch's lazy init."""
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal(int(seconds * sample_rate))).astype(np.float32)


def respond_codes(requests: Sequence, tokenizer: Callable, output: str, input_name: str = "audio_16k"
                  ) -> list:
    """The vq02 / vq06 models: every request's 16 kHz utterance through one `tokenizer` call."""
    return respond_batched(requests, parse=lambda request: read_audio(request, input_name),
                           run=tokenizer, outputs=lambda codes: [tensor(output, codes)])


def tokenizer_instance(args: dict, make: Callable):
    """The vq02 / vq06 models' tokenizer: `make(settings, engine_client)` on this instance's
    device and threads; warmed up in process, but not through an engine model, which may not
    be loaded yet (no BLS during initialize)."""
    settings = load_settings(args)
    settings.apply_threads()
    engine = engine_client.from_model_args(args)
    tokenizer = make(settings, engine)
    if engine is None:
        tokenizer([warmup_audio()])
    return tokenizer
