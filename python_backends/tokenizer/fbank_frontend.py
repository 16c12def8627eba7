"""VQ02 features: kaldi fbank → LFR(7,6) → CMVN over a whole utterance, cut to the stream's length.

Step-Audio runs FunASR's streaming frontend chunk by chunk (3840 samples per step). Every
fbank frame and every LFR frame depends only on its own samples, so one offline pass gives
the same values; only the number of frames differs at the tail, which
`stream_frame_count` reproduces (the original funasr_detach rule, see feasibility.md §2).

The fbank is `fbank_torch`, torchaudio's arithmetic on the model's device: on the CPU the
features are bit for bit those of the original's `torchaudio.compliance.kaldi.fbank` calls,
the final chunk's own call included (tests/test_fbank_torch.py). `ParaformerFrontend.packed`
returns the features of a whole batch as one tensor on the device, ready for the packed
chunk encoder.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from . import fbank_torch
from ..settings import ALGORITHM as A


def stream_frame_count(num_samples: int) -> int:
    """LFR frames the original streaming frontend emits for `num_samples` 16 kHz samples."""
    left = (A.lfr_m - 1) // 2
    full, tail = divmod(num_samples, A.chunk_samples)
    total = full * A.chunk_new_frames
    if tail == 0:
        return total
    carried = (A.frame_length_samples - A.frame_shift_samples) if full > 0 else 0
    available = carried + tail
    if available < A.frame_length_samples:
        return total
    fbank_frames = (available - A.frame_length_samples) // A.frame_shift_samples + 1
    spliced = (1 if full > 0 else left) + fbank_frames
    if spliced < A.lfr_m:
        return total
    return total + math.ceil((spliced - left) / A.lfr_n)


def final_call_frames(num_samples: int) -> int:
    """fbank frames the streaming frontend computes in its last fbank call (the carried samples
    plus the final chunk; a chunk too short for a frame leaves the previous call last)."""
    full, tail = divmod(num_samples, A.chunk_samples)
    first = fbank_torch.num_fbank_frames(A.chunk_samples)
    if full == 0:
        return fbank_torch.num_fbank_frames(tail)
    carried = A.chunk_samples - first * A.frame_shift_samples
    last = fbank_torch.num_fbank_frames(carried + tail) if tail else 0
    if last:
        return last
    return first if full == 1 else fbank_torch.num_fbank_frames(carried + A.chunk_samples)


class ParaformerFrontend:
    """Whole-utterance fbank/LFR/CMVN with the streaming tail rule, on `device`."""

    def __init__(self, cmvn_shift: np.ndarray, cmvn_scale: np.ndarray, dither: float,
                 window: str = "hamming", device: str | torch.device = "cpu"):
        self.shift = cmvn_shift.astype(np.float32)
        self.scale = cmvn_scale.astype(np.float32)
        self.device = torch.device(device)
        self._shift_t = torch.from_numpy(self.shift).to(self.device)
        self._scale_t = torch.from_numpy(self.scale).to(self.device)
        self._fbank = fbank_torch.TorchFbank(dither, window, self.device)

    def fbank(self, audio: np.ndarray) -> np.ndarray:
        """torchaudio's fbank of one utterance (FunASR's call): float32 [F, 80] on the host."""
        return self._fbank(audio).cpu().numpy()

    def packed(self, audios: Sequence) -> tuple[torch.Tensor, list[int]]:
        """A batch of utterances → float32 [sum T, 560] on this frontend's device (utterances
        one after the other, no padding) and each T = stream_frame_count(len). The audio is
        copied to the device once and nothing comes back."""
        lengths = [stream_frame_count(len(a)) for a in audios]
        final_calls = [final_call_frames(len(a)) for a in audios]
        fbank, counts = self._fbank.packed(audios, own_call_rows=final_calls)
        return fbank_torch.lfr_cmvn(fbank, counts, lengths, self._shift_t, self._scale_t), lengths

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """float32 16 kHz samples in [-1, 1] → float32 [T, 560], T = stream_frame_count(len)."""
        return self.packed([audio])[0].cpu().numpy()
