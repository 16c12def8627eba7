"""torchaudio's windowed-sinc resampler (Hann window, width 6, rolloff 0.99) in plain torch.

Step-Audio resamples with `torchaudio.transforms.Resample`, whose kernel is computed in
float64 and cast to float32. torchaudio cannot load beside our CPU torch build, so the same
formula is written here. Works for up- and down-sampling by any integer rate ratio.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch.nn import functional as F

LOWPASS_WIDTH = 6
ROLLOFF = 0.99


@functools.lru_cache(maxsize=32)
def _kernel(orig: int, new: int) -> tuple[torch.Tensor, int]:
    base = min(orig, new) * ROLLOFF
    width = math.ceil(LOWPASS_WIDTH * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx
    t = (t * base).clamp(-LOWPASS_WIDTH, LOWPASS_WIDTH)
    window = torch.cos(t * math.pi / LOWPASS_WIDTH / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base / orig)
    return kernel.to(torch.float32), width


def resample(audio: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """[..., N] float32 at orig_rate → [..., ceil(N·new/orig)] float32 at new_rate."""
    if orig_rate == new_rate:
        return audio
    g = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // g, int(new_rate) // g
    kernel, width = _kernel(orig, new)
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    y = F.conv1d(F.pad(x, (width, width + orig))[:, None], kernel, stride=orig)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, :math.ceil(new * shape[-1] / orig)]
    return y.reshape(*shape[:-1], -1).numpy()
