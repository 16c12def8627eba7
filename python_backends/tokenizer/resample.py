"""torchaudio's windowed-sinc resampler (sinc_interp_hann, lowpass_filter_width 6, rolloff 0.99)
in plain torch, with torchaudio's own arithmetic, so that on the same torch the output is
bit-identical to torchaudio's (torchaudio cannot load beside our CPU torch build).

Reproduces `_get_sinc_resample_kernel` and `_apply_sinc_resample_kernel` of
torchaudio/functional/functional.py: the same operations in the same dtypes and order, the same
padding and output length. The original calls them two ways, which round differently:

- FUNCTIONAL, `torchaudio.functional.resample(x, orig, new)` (CosyVoice's frontend: prompt mel,
  speaker embedding): the kernel is built in x's dtype, float32 throughout.
- TRANSFORM, `torchaudio.transforms.Resample(orig, new)(x)` (Step-Audio's tokenizer,
  `utils.resample_audio`): the kernel is built once with dtype None: the phase offsets are an
  integer range divided by `new` (a float32 quotient) added to a float64 tap grid, the rest is
  float64, cast to float32 at the end.

Works for up- and down-sampling by any integer rate ratio.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch.nn import functional as F

LOWPASS_WIDTH = 6  # torchaudio's defaults, which the original keeps
ROLLOFF = 0.99
FUNCTIONAL = "functional"
TRANSFORM = "transform"


def _phase_grid(orig: int, new: int, width: int, arithmetic: str) -> torch.Tensor:
    """[new, 1, 2·width + orig] time of every tap (in input samples / orig) for every output
    phase, in the dtype each call style computes it."""
    if arithmetic not in (FUNCTIONAL, TRANSFORM):
        raise ValueError(f"resample arithmetic {arithmetic!r}: choose {FUNCTIONAL!r} or "
                         f"{TRANSFORM!r}")
    grid_dtype = torch.float32 if arithmetic == FUNCTIONAL else torch.float64
    phase_dtype = torch.float32 if arithmetic == FUNCTIONAL else None  # None: an int64 range
    taps = torch.arange(-width, width + orig, dtype=grid_dtype)[None, None] / orig
    return torch.arange(0, -new, -1, dtype=phase_dtype)[:, None, None] / new + taps


@functools.lru_cache(maxsize=32)
def _kernel(orig: int, new: int, arithmetic: str) -> tuple[torch.Tensor, int]:
    """float32 [new, 1, 2·width + orig] sinc·Hann kernel and the width (orig, new reduced)."""
    base = min(orig, new) * ROLLOFF
    width = math.ceil(LOWPASS_WIDTH * orig / base)
    t = _phase_grid(orig, new, width, arithmetic) * base
    t = t.clamp(-LOWPASS_WIDTH, LOWPASS_WIDTH)
    window = torch.cos(t * math.pi / LOWPASS_WIDTH / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernel = kernel * (window * (base / orig))
    return kernel.to(torch.float32), width


def output_length(orig: int, new: int, length: int) -> int:
    """ceil(new·length/orig) as torchaudio takes it: of a float32 tensor, so one sample short of
    the exact ceiling when the quotient lies within float32 rounding above an integer."""
    return int(torch.ceil(torch.as_tensor(new * length / orig, dtype=torch.float32)))


def resample(audio: np.ndarray, orig_rate: int, new_rate: int,
             arithmetic: str = FUNCTIONAL) -> np.ndarray:
    """[..., N] float32 at orig_rate → [..., output_length] float32 at new_rate (the input
    itself when the rates are equal), as torchaudio's `arithmetic` call style computes it."""
    if orig_rate == new_rate:
        return audio
    g = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // g, int(new_rate) // g
    kernel, width = _kernel(orig, new, arithmetic)
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    y = F.conv1d(F.pad(x, (width, width + orig))[:, None], kernel, stride=orig)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, :output_length(orig, new, shape[-1])]
    return y.reshape(*shape[:-1], -1).numpy()
