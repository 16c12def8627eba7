"""Writes torchaudio_fbank.npz: `torchaudio.compliance.kaldi.fbank` called as the original calls it,
on a fixed 0.25 s signal. Not run by the tests (torchaudio cannot be installed next to this
project's torch): run once in a throwaway virtualenv with upstream's pins, torch==2.8.0 and
torchaudio==2.8.0 (the default wheels; everything runs on the CPU), plus numpy:

    python tests/data/torchaudio_fbank.py tests/data/torchaudio_fbank.npz

The committed file came from torch 2.8.0 / torchaudio 2.8.0 on an x86-64 CPU (MKL 2024.2,
AVX-512), one thread; torch 2.13.0 with torchaudio 2.11.1's kaldi.py gives the same bytes.
"""
from __future__ import annotations

import sys

import numpy as np


def pinned_signal() -> np.ndarray:
    """4000 samples at 16 kHz, exact in float32 (int16 / 32768): two tones over hash noise, then
    digital silence (the log floor), full-scale ±1 alternation, and a DC offset with noise."""
    n = np.arange(4000, dtype=np.int64)
    noise = (n * 2654435761) % 65536 - 32768
    tones = np.rint(6000 * np.sin(2 * np.pi * 440 * n / 16000) + 2500 * np.sin(2 * np.pi * 3130 * n / 16000))
    x = (tones + noise // 8).astype(np.int64)
    x[1600:2400] = 0
    x[2400:2800] = np.where(n[2400:2800] % 2 == 0, 32767, -32768)
    x[2800:] = 8192 + noise[2800:] // 64
    return (np.clip(x, -32768, 32767).astype(np.float32) / np.float32(32768)).astype(np.float32)


def main(out: str) -> None:
    import torch
    import torchaudio
    import torchaudio.compliance.kaldi as kaldi

    torch.set_num_threads(1)

    def funasr(audio: np.ndarray, window: str = "hamming") -> np.ndarray:
        """FunASR WavFrontend(Online).forward_fbank on one waveform."""
        waveform = (torch.from_numpy(audio) * (1 << 15)).unsqueeze(0)
        return kaldi.fbank(waveform, num_mel_bins=80, frame_length=25, frame_shift=10, dither=0.0,
                           energy_floor=0.0, window_type=window, sample_frequency=16000).numpy()

    def cosyvoice(audio: np.ndarray) -> np.ndarray:
        """CosyVoice frontend `extract_spk_embedding`'s fbank (before the mean removal)."""
        return kaldi.fbank(torch.from_numpy(audio).unsqueeze(0), num_mel_bins=80, dither=0,
                           sample_frequency=16000).numpy()

    signal = pinned_signal()
    arrays = {"signal": signal, "funasr_hamming": funasr(signal),
              # 3 frames: MKL rounds a 3-row product's row 1 unlike the same row in 23
              "funasr_hamming_short": funasr(signal[:720]),
              "cosyvoice_povey": cosyvoice(signal)}
    for window in ("hanning", "povey", "rectangular", "blackman"):
        arrays[f"funasr_{window}"] = funasr(signal, window)
    versions = f"torch {torch.__version__}, torchaudio {torchaudio.__version__}"
    np.savez_compressed(out, versions=np.array(versions), **arrays)
    print(f"wrote {out} ({versions})")


if __name__ == "__main__":
    main(sys.argv[1])
