"""Kaldi fbank, LFR(7,6) and CMVN in torch, on whatever device the model runs on.

Computes what kaldi-native-fbank computes with the options `ParaformerFrontend` sets:
16 kHz, 25 ms frames every 10 ms with snip_edges (a frame only where all 400 samples exist),
per frame: optional dither, DC removal, pre-emphasis 0.97 (first sample against itself),
window, zero-padding to 512, power spectrum, 80 triangular Kaldi mel bins between 20 Hz and
Nyquist (the Nyquist FFT bin itself carries no weight in Kaldi), natural log floored at
float32 epsilon. Samples are scaled by 32768 first, as the CPU path does.

Utterances are batched without padding: their frames are stacked into one [F, 400] tensor
(row blocks per utterance), every later step is row-wise, and LFR gathers rows by index.
Nothing here leaves the device: the only host→device traffic is the audio and a few
per-utterance integers, and no value is read back.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch

from ..settings import ALGORITHM as A

PADDED_WINDOW = 512  # next power of two above the 400-sample frame (Kaldi round_to_power_of_two)
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
SAMPLE_SCALE = 32768.0
LOG_FLOOR = float(np.finfo(np.float32).eps)  # Kaldi floors mel energies at FLT_EPSILON
FRAMES_PER_PASS = 16384  # rows per FFT pass: bounds the temporaries (~70 MB) for long batches


def num_fbank_frames(num_samples: int) -> int:
    """snip_edges=True framing: full frames only."""
    if num_samples < A.frame_length_samples:
        return 0
    return 1 + (num_samples - A.frame_length_samples) // A.frame_shift_samples


def _device_key(device) -> str:
    return str(torch.device(device))


@functools.lru_cache(maxsize=16)
def window_function(kind: str, device: str = "cpu") -> torch.Tensor:
    """Kaldi's window functions over 400 samples (computed in float64, stored float32)."""
    n = A.frame_length_samples
    a = 2.0 * math.pi / (n - 1)
    i = np.arange(n, dtype=np.float64)
    if kind == "hamming":
        w = 0.54 - 0.46 * np.cos(a * i)
    elif kind == "hanning":
        w = 0.5 - 0.5 * np.cos(a * i)
    elif kind == "povey":
        w = (0.5 - 0.5 * np.cos(a * i)) ** 0.85
    elif kind == "rectangular":
        w = np.ones(n)
    elif kind == "blackman":
        w = 0.42 - 0.5 * np.cos(a * i) + 0.08 * np.cos(2 * a * i)
    elif kind == "sine":
        w = np.sin(0.5 * a * i)
    else:
        raise ValueError(f"unknown fbank window '{kind}' (hamming, hanning, povey, rectangular, "
                         "blackman or sine)")
    return torch.as_tensor(w.astype(np.float32), device=device)


def _mel(freq: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=16)
def mel_banks(num_bins: int = A.n_mels, device: str = "cpu") -> torch.Tensor:
    """Kaldi's triangular mel filters as a [PADDED_WINDOW // 2, num_bins] float32 matrix.

    Triangles are linear in mel; FFT bin i (frequency i·fs/512, i < 256) gets weight
    (mel − left)/(centre − left) on the rising and (right − mel)/(right − centre) on the
    falling edge, zero outside (left, right).
    """
    fft_bins = PADDED_WINDOW // 2
    nyquist = 0.5 * A.sample_rate
    mel_low, mel_high = _mel(np.float64(LOW_FREQ)), _mel(np.float64(nyquist))
    delta = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + delta * np.arange(num_bins)
    centre, right = left + delta, left + 2 * delta
    mel = _mel(np.arange(fft_bins) * (A.sample_rate / PADDED_WINDOW))[:, None]
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    weights = np.where((mel > left) & (mel < right), np.where(mel <= centre, up, down), 0.0)
    return torch.as_tensor(weights.astype(np.float32), device=device)


def _as_audio(audio, device: torch.device) -> torch.Tensor:
    tensor = torch.as_tensor(audio, dtype=torch.float32)
    if tensor.ndim != 1:
        raise ValueError(f"audio must be 1-D samples, got shape {tuple(tensor.shape)}")
    return tensor.to(device, non_blocking=True)


def frames_of(audios: Sequence, device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """All snip-edges frames of all utterances as one float32 [F, 400] tensor on `device`
    (scaled by 32768), and each utterance's frame count."""
    blocks, counts = [], []
    for audio in audios:
        samples = _as_audio(audio, device)
        count = num_fbank_frames(samples.numel())
        counts.append(count)
        if count:
            blocks.append(samples.unfold(0, A.frame_length_samples, A.frame_shift_samples)[:count])
    if not blocks:
        return torch.zeros(0, A.frame_length_samples, device=device), counts
    return torch.cat(blocks).mul_(SAMPLE_SCALE), counts


def fbank_rows(frames: torch.Tensor, window: torch.Tensor, banks: torch.Tensor, dither: float = 0.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Frames [F, 400] (modified in place) → log mel energies [F, bins]."""
    if dither:
        noise = torch.randn(frames.shape, generator=generator, device=frames.device,
                            dtype=frames.dtype)
        frames.add_(noise, alpha=dither)
    frames.sub_(frames.mean(dim=1, keepdim=True))
    shifted = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames.sub_(shifted, alpha=PREEMPHASIS)
    frames.mul_(window)
    spectrum = torch.fft.rfft(frames, n=PADDED_WINDOW)[:, :PADDED_WINDOW // 2]
    power = spectrum.real.square() + spectrum.imag.square()
    if power.is_cuda and _tf32_matmul():
        # TF32 (10-bit mantissa) would move log energies by ~1e-3; this product is tiny
        energies = (power.double() @ banks.double()).float()
    else:
        energies = power @ banks
    return energies.clamp_(min=LOG_FLOOR).log_()


def _tf32_matmul() -> bool:
    """Whether float32 CUDA matmuls may run in TF32 (a process-wide switch the server may set)."""
    return bool(torch.backends.cuda.matmul.allow_tf32) or torch.get_float32_matmul_precision() != "highest"


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
    """Batched Kaldi fbank (the `ParaformerFrontend` options) on one torch device."""

    def __init__(self, dither: float = 0.0, window: str = "hamming", device: str | torch.device = "cpu",
                 num_bins: int = A.n_mels, generator: torch.Generator | None = None,
                 frames_per_pass: int = FRAMES_PER_PASS):
        self.device = torch.device(device)
        key = _device_key(self.device)
        self.window = window_function(window, key)
        self.banks = mel_banks(num_bins, key)
        self.dither = float(dither)
        self.generator = generator
        self.frames_per_pass = int(frames_per_pass)

    def packed(self, audios: Sequence) -> tuple[torch.Tensor, list[int]]:
        """Utterances (numpy or torch, float samples in [-1, 1]) → fbank rows of all of them,
        float32 [sum F, bins] on the device, and each utterance's F."""
        frames, counts = frames_of(audios, self.device)
        if len(frames) == 0:
            return torch.zeros(0, self.banks.shape[1], device=self.device), counts
        if len(frames) <= self.frames_per_pass:
            return fbank_rows(frames, self.window, self.banks, self.dither, self.generator), counts
        out = torch.empty(len(frames), self.banks.shape[1], device=self.device)
        for start in range(0, len(frames), self.frames_per_pass):
            rows = slice(start, start + self.frames_per_pass)
            out[rows] = fbank_rows(frames[rows], self.window, self.banks, self.dither, self.generator)
        return out, counts

    def __call__(self, audio) -> torch.Tensor:
        """One utterance → float32 [F, bins] on the device."""
        return self.packed([audio])[0]
