"""Whisper's 128-bin log-mel (what Step-Audio feeds `speech_tokenizer_v1.onnx`), in torch.

n_fft 400, hop 160, periodic Hann, centred reflect padding, last frame dropped, power
spectrum, Slaney mel filters (identical to Whisper's shipped table), log10, clamp to
max − 8, (x + 4) / 4. No padding to 30 s: a piece of N samples gives N // 160 frames.
"""
from __future__ import annotations

import functools

import librosa
import numpy as np
import torch

N_FFT = 400
HOP = 160


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int, device: str = "cpu") -> torch.Tensor:
    return torch.from_numpy(librosa.filters.mel(sr=16000, n_fft=N_FFT, n_mels=n_mels)).to(device)


@functools.lru_cache(maxsize=4)
def hann(device: str = "cpu") -> torch.Tensor:
    return torch.hann_window(N_FFT).to(device)


def log_mel(piece: np.ndarray | torch.Tensor, n_mels: int = 128, device: str = "cpu") -> torch.Tensor:
    """One piece of 16 kHz samples → float32 [n_mels, len // 160]."""
    audio = torch.as_tensor(piece, dtype=torch.float32, device=device)
    stft = torch.stft(audio, N_FFT, HOP, window=hann(device), return_complex=True)
    power = stft[..., :-1].abs() ** 2
    spec = torch.clamp(mel_filters(n_mels, device) @ power, min=1e-10).log10()
    spec = torch.maximum(spec, spec.max() - 8.0)
    return (spec + 4.0) / 4.0
