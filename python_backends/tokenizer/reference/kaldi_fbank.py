"""`torchaudio.compliance.kaldi.fbank`, one call at a time, written out plainly for the oracle.

Step-Audio's FunASR copy and CosyVoice's frontend call torchaudio's fbank; pip funasr falls back
to kaldi-native-fbank when torchaudio is missing (it is here: no build fits this torch), which
is a different computation. This is torchaudio's own sequence of torch ops for the options
those callers use (snip_edges, no VTLN, no energy column, power, log), independent of the
batched `fbank_torch`; tests/test_fbank_torch.py pins both to torchaudio's numbers.
"""
from __future__ import annotations

import contextlib
import math
import types

import torch
from torch.nn import functional as F

# torchaudio defaults the callers never change; anything else is refused, not ignored
_FIXED = dict(blackman_coeff=0.42, channel=-1, high_freq=0.0, htk_compat=False, low_freq=20.0,
              min_duration=0.0, preemphasis_coefficient=0.97, raw_energy=True, remove_dc_offset=True,
              round_to_power_of_two=True, snip_edges=True, subtract_mean=False, use_energy=False,
              use_log_fbank=True, use_power=True, vtln_high=-500.0, vtln_low=100.0, vtln_warp=1.0)


def _window(kind: str, size: int, device, dtype) -> torch.Tensor:
    if kind == "hanning":
        return torch.hann_window(size, periodic=False, device=device, dtype=dtype)
    if kind == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46, device=device, dtype=dtype)
    if kind == "povey":
        return torch.hann_window(size, periodic=False, device=device, dtype=dtype).pow(0.85)
    if kind == "rectangular":
        return torch.ones(size, device=device, dtype=dtype)
    if kind == "blackman":
        a = 2 * math.pi / (size - 1)
        n = torch.arange(size, device=device, dtype=dtype)
        return (0.42 - 0.5 * torch.cos(a * n) + (0.5 - 0.42) * torch.cos(2 * a * n)).to(device=device, dtype=dtype)
    raise ValueError(f"invalid window type {kind}")


def _mel_scale(freq):
    return 1127.0 * (1.0 + freq / 700.0).log()


def _mel_banks(num_bins: int, padded: int, sample_freq: float) -> torch.Tensor:
    """[num_bins, padded // 2] triangles, low 20 Hz, high Nyquist (default dtype, CPU)."""
    mel_low = 1127.0 * math.log(1.0 + 20.0 / 700.0)
    mel_high = 1127.0 * math.log(1.0 + 0.5 * sample_freq / 700.0)
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins).unsqueeze(1)
    left = mel_low + b * delta
    center = mel_low + (b + 1.0) * delta
    right = mel_low + (b + 2.0) * delta
    mel = _mel_scale(sample_freq / padded * torch.arange(padded / 2)).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    return torch.max(torch.zeros(1), torch.min(up, down))


def fbank(waveform: torch.Tensor, num_mel_bins: int = 23, frame_length: float = 25.0,
          frame_shift: float = 10.0, dither: float = 0.0, energy_floor: float = 1.0,
          window_type: str = "povey", sample_frequency: float = 16000.0, **fixed) -> torch.Tensor:
    """waveform (1, n) or (n,) → log mel energies (frames, num_mel_bins). `energy_floor` only
    floors the energy column, which these callers do not ask for."""
    changed = {k: v for k, v in fixed.items() if k not in _FIXED or _FIXED[k] != v}
    if changed:
        raise NotImplementedError(f"reference fbank: unsupported options {sorted(changed)}")
    device, dtype = waveform.device, waveform.dtype
    wave = waveform[0] if waveform.dim() == 2 else waveform
    shift = int(sample_frequency * frame_shift * 0.001)
    size = int(sample_frequency * frame_length * 0.001)
    padded = 1 if size == 0 else 2 ** (size - 1).bit_length()
    if not 2 <= size <= len(wave):
        raise ValueError(f"choose a window size {size} that is [2, {len(wave)}]")
    count = 1 + (len(wave) - size) // shift
    frames = wave.as_strided((count, size), (shift * wave.stride(0), wave.stride(0)))
    if dither != 0.0:
        frames = frames + torch.randn(frames.shape, device=device, dtype=dtype) * dither
    frames = frames - torch.mean(frames, dim=1).unsqueeze(1)
    previous = F.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)
    frames = frames - 0.97 * previous[:, :-1]
    frames = frames * _window(window_type, size, device, dtype).unsqueeze(0)
    frames = F.pad(frames.unsqueeze(0), (0, padded - size), mode="constant", value=0).squeeze(0)
    spectrum = torch.fft.rfft(frames).abs().pow(2.0)
    banks = _mel_banks(num_mel_bins, padded, sample_frequency).to(device=device, dtype=dtype)
    banks = F.pad(banks, (0, 1), mode="constant", value=0)
    energies = torch.mm(spectrum, banks.T)
    eps = torch.tensor(torch.finfo(torch.float).eps).to(device=device, dtype=dtype)
    return torch.max(energies, eps).log()


@contextlib.contextmanager
def funasr_uses_torchaudio_fbank():
    """Inside: pip funasr's wav frontends call this `fbank` (torchaudio's), not its knf fallback."""
    from funasr.frontends import wav_frontend

    before = wav_frontend.kaldi
    wav_frontend.kaldi = types.SimpleNamespace(fbank=fbank)
    try:
        yield
    finally:
        wav_frontend.kaldi = before
