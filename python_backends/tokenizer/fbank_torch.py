"""Kaldi fbank as `torchaudio.compliance.kaldi.fbank` computes it, plus LFR(7,6) and CMVN, batched.

The original calls torchaudio's fbank twice: FunASR's `WavFrontend(Online)` for vq02 (samples
×32768, hamming, 80 bins, energy_floor 0) and CosyVoice's speaker frontend (samples as they are,
povey, 80 bins). torchaudio is not installable next to this torch, so this module runs the same
torch ops on the same dtypes in the same order as its kaldi.py (identical in torchaudio 2.8,
upstream's pin, and 2.11) for those options: snip_edges framing, optional dither, DC removal,
pre-emphasis 0.97 against the replicated first sample, window, zero pad to 512, |rfft|², its
float32 mel banks with a zero Nyquist column, `max(·, FLT_EPSILON).log()`. On the CPU the
result is torchaudio's bit for bit, call by call (torch 2.8 with torchaudio 2.8, and torch 2.13;
tests/test_fbank_torch.py pins torchaudio's own numbers). On CUDA the same ops run, as in the
original (its frontend calls `.cuda()`), but cuFFT/cuBLAS rounding is not pinned.

Utterances are batched without padding: their frames are stacked into one [F, 400] tensor
(row blocks per utterance); every step is row-wise and LFR gathers rows by index. Nothing
leaves the device: the only host→device traffic is the audio and a few integers.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
from torch.nn import functional as F

from ..settings import ALGORITHM as A

PADDED_WINDOW = 512  # next power of two above the 400-sample frame (round_to_power_of_two)
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
FUNASR_SCALE = 1 << 15  # WavFrontend multiplies the [-1, 1] samples by this before fbank
LOG_FLOOR = torch.finfo(torch.float32).eps  # torchaudio's EPSILON (FLT_EPSILON)
WINDOWS = ("hamming", "hanning", "povey", "rectangular", "blackman")  # torchaudio's
BLACKMAN_COEFF = 0.42
FRAMES_PER_PASS = 16384  # rows per pass: bounds the temporaries (~150 MB) for long batches
# MKL's sgemm (x86-64) may round rows of a product with fewer rows than this differently from
# the same rows in a taller one (seen: 1-3 row products); from here up, a row's result does not
# depend on the row count, its position or the thread count
MIN_PASS_ROWS = 12


def num_fbank_frames(num_samples: int) -> int:
    """snip_edges=True framing: full frames only."""
    if num_samples < A.frame_length_samples:
        return 0
    return 1 + (num_samples - A.frame_length_samples) // A.frame_shift_samples


def _device_key(device) -> str:
    return str(torch.device(device))


@functools.lru_cache(maxsize=16)
def window_function(kind: str, device: str = "cpu") -> torch.Tensor:
    """torchaudio's window over 400 samples: float32, computed on `device` as torchaudio does."""
    n, dtype = A.frame_length_samples, torch.float32
    if kind == "hamming":
        return torch.hamming_window(n, periodic=False, alpha=0.54, beta=0.46, device=device, dtype=dtype)
    if kind == "hanning":
        return torch.hann_window(n, periodic=False, device=device, dtype=dtype)
    if kind == "povey":
        return torch.hann_window(n, periodic=False, device=device, dtype=dtype).pow(0.85)
    if kind == "rectangular":
        return torch.ones(n, device=device, dtype=dtype)
    if kind == "blackman":
        a = 2 * math.pi / (n - 1)
        i = torch.arange(n, device=device, dtype=dtype)
        return (BLACKMAN_COEFF - 0.5 * torch.cos(a * i)
                + (0.5 - BLACKMAN_COEFF) * torch.cos(2 * a * i)).to(device=device, dtype=dtype)
    raise ValueError(f"unknown fbank window '{kind}' (one of {', '.join(WINDOWS)})")


def _mel(freq):
    return 1127.0 * (1.0 + freq / 700.0).log()


@functools.lru_cache(maxsize=16)
def mel_banks(num_bins: int = A.n_mels, device: str = "cpu") -> torch.Tensor:
    """torchaudio's `get_mel_banks` (no VTLN, 20 Hz to Nyquist) plus its zero Nyquist column:
    float32 [num_bins, PADDED_WINDOW // 2 + 1], built in float32 on the CPU as there."""
    nyquist = 0.5 * A.sample_rate
    mel_low = 1127.0 * math.log(1.0 + LOW_FREQ / 700.0)
    mel_high = 1127.0 * math.log(1.0 + nyquist / 700.0)
    delta = (mel_high - mel_low) / (num_bins + 1)
    rank = torch.arange(num_bins, dtype=torch.float32).unsqueeze(1)
    left = mel_low + rank * delta
    centre = mel_low + (rank + 1.0) * delta
    right = mel_low + (rank + 2.0) * delta
    fft_bin_width = A.sample_rate / PADDED_WINDOW
    mel = _mel(fft_bin_width * torch.arange(PADDED_WINDOW // 2, dtype=torch.float32)).unsqueeze(0)
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    banks = torch.max(torch.zeros(1), torch.min(up, down))
    return F.pad(banks.to(device=device), (0, 1), mode="constant", value=0)


def _as_audio(audio, device: torch.device) -> torch.Tensor:
    tensor = torch.as_tensor(audio, dtype=torch.float32)
    if tensor.ndim != 1:
        raise ValueError(f"audio must be 1-D samples, got shape {tuple(tensor.shape)}")
    return tensor.to(device, non_blocking=True)


def frames_of(audios: Sequence, device: torch.device, scale: float = FUNASR_SCALE
              ) -> tuple[torch.Tensor, list[int]]:
    """All snip-edges frames of all utterances (each ×`scale` first, as FunASR scales the
    waveform) as one float32 [F, 400] tensor on `device`, and each utterance's frame count."""
    blocks, counts = [], []
    for audio in audios:
        samples = _as_audio(audio, device)
        count = num_fbank_frames(samples.numel())
        counts.append(count)
        if count:
            if scale != 1:
                samples = samples * scale
            blocks.append(samples.unfold(0, A.frame_length_samples, A.frame_shift_samples)[:count])
    if not blocks:
        return torch.zeros(0, A.frame_length_samples, device=device), counts
    return torch.cat(blocks), counts


def fbank_rows(frames: torch.Tensor, window: torch.Tensor, banks: torch.Tensor, dither: float = 0.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Frames [F, 400] → log mel energies [F, bins], torchaudio's steps one by one."""
    if dither != 0.0:
        noise = torch.randn(frames.shape, generator=generator, device=frames.device, dtype=frames.dtype)
        frames = frames + noise * dither
    frames = frames - torch.mean(frames, dim=1).unsqueeze(1)
    previous = F.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)
    frames = frames - PREEMPHASIS * previous[:, :-1]
    frames = frames * window.unsqueeze(0)
    frames = F.pad(frames.unsqueeze(0), (0, PADDED_WINDOW - frames.shape[1]), mode="constant",
                   value=0).squeeze(0)
    power = torch.fft.rfft(frames).abs().pow(2.0)
    if power.is_cuda and _tf32_matmul():
        # TF32 (10-bit mantissa) would move log energies by ~1e-3; this product is tiny
        energies = torch.mm(power.double(), banks.double().T).float()
    else:
        energies = torch.mm(power, banks.T)
    return torch.max(energies, _log_floor(energies.device)).log()


@functools.lru_cache(maxsize=16)
def _floor_on(device: str) -> torch.Tensor:
    return torch.tensor(LOG_FLOOR, dtype=torch.float32, device=device)


def _log_floor(device: torch.device) -> torch.Tensor:
    return _floor_on(_device_key(device))


def _tf32_matmul() -> bool:
    """Whether float32 CUDA matmuls may run in TF32 (a process-wide switch the server may set)."""
    return bool(torch.backends.cuda.matmul.allow_tf32) or torch.get_float32_matmul_precision() != "highest"


def pass_bounds(rows: int, per_pass: int) -> list[tuple[int, int]]:
    """Row ranges of near-equal passes of at most `per_pass` rows (none below MIN_PASS_ROWS
    unless `rows` is)."""
    per_pass = max(int(per_pass), 2 * MIN_PASS_ROWS)
    passes = max(1, -(-rows // per_pass))
    edges = [rows * k // passes for k in range(passes + 1)]
    return list(zip(edges[:-1], edges[1:]))


def lfr_cmvn(fbank: torch.Tensor, fbank_counts: Sequence[int], lfr_counts: Sequence[int],
             shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Packed fbank rows → packed LFR rows with CMVN: [sum(lfr_counts), lfr_m · bins].

    LFR frame t of an utterance stacks its fbank frames 6t−3 … 6t+3, clamped to the
    utterance's first and last frame; then (x + shift) · scale.
    """
    device, bins = fbank.device, fbank.shape[1]
    total = int(sum(lfr_counts))
    if total == 0:
        return torch.zeros(0, A.lfr_m * bins, device=device)
    lfr = torch.as_tensor(list(lfr_counts), dtype=torch.int64).to(device, non_blocking=True)
    frames = torch.as_tensor(list(fbank_counts), dtype=torch.int64).to(device, non_blocking=True)
    fbank_start = torch.cumsum(frames, 0) - frames
    lfr_start = torch.cumsum(lfr, 0) - lfr
    owner = torch.repeat_interleave(torch.arange(len(lfr), device=device), lfr,
                                    output_size=total)
    local = torch.arange(total, device=device) - lfr_start[owner]
    taps = torch.arange(A.lfr_m, device=device) - (A.lfr_m - 1) // 2
    index = local[:, None] * A.lfr_n + taps[None, :]
    index = torch.minimum(index.clamp_(min=0), (frames[owner] - 1)[:, None]) + fbank_start[owner][:, None]
    stacked = fbank[index.reshape(-1)].reshape(total, A.lfr_m * bins)
    return stacked.add_(shift).mul_(scale)


class TorchFbank:
    """Batched `torchaudio.compliance.kaldi.fbank` with 80 bins (by default) on one torch device.

    Defaults are FunASR's vq02 frontend (hamming, samples ×32768); CosyVoice's speaker
    frontend is `window="povey", scale=1`. energy_floor only touches the unused energy column.
    """

    def __init__(self, dither: float = 0.0, window: str = "hamming", device: str | torch.device = "cpu",
                 num_bins: int = A.n_mels, generator: torch.Generator | None = None,
                 frames_per_pass: int = FRAMES_PER_PASS, scale: float = FUNASR_SCALE):
        self.device = torch.device(device)
        key = _device_key(self.device)
        self.window = window_function(window, key)
        self.banks = mel_banks(num_bins, key)
        self.dither = float(dither)
        self.generator = generator
        self.frames_per_pass = int(frames_per_pass)
        self.scale = scale

    def _rows(self, frames: torch.Tensor) -> torch.Tensor:
        return fbank_rows(frames, self.window, self.banks, self.dither, self.generator)

    def packed(self, audios: Sequence, own_call_rows: Sequence[int] | None = None
               ) -> tuple[torch.Tensor, list[int]]:
        """Utterances (numpy or torch, float samples in [-1, 1]) → fbank rows of all of them,
        float32 [sum F, bins] on the device, and each utterance's F.

        `own_call_rows[i]`: how many of utterance i's last frames the original computes in one
        fbank call (default: all of them, one call per utterance; the streaming frontend's
        final chunk). Fewer than MIN_PASS_ROWS are recomputed on their own, so each row is
        what that call gives.
        """
        frames, counts = frames_of(audios, self.device, self.scale)
        bins = self.banks.shape[0]
        if len(frames) == 0:
            return torch.zeros(0, bins, device=self.device), counts
        bounds = pass_bounds(len(frames), self.frames_per_pass)
        if len(bounds) == 1:
            out = self._rows(frames)
        else:
            out = torch.empty(len(frames), bins, device=self.device)
            for start, stop in bounds:
                out[start:stop] = self._rows(frames[start:stop])
        end = 0
        for count, own in zip(counts, counts if own_call_rows is None else own_call_rows):
            end += count
            own = min(int(own), count)
            if 0 < own < MIN_PASS_ROWS and own != len(frames):
                out[end - own:end] = self._rows(frames[end - own:end])
        return out, counts

    def __call__(self, audio) -> torch.Tensor:
        """One utterance → float32 [F, bins] on the device (torchaudio's call on it)."""
        return self.packed([audio])[0]
