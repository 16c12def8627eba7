"""The flow's prompt mel: CosyVoice's matcha-style 80-bin log-mel of the prompt at 24 kHz, 50 Hz
(EditX `CosyVoiceFrontEnd.extract_speech_feat`, spec §3.3 step 1).

Per utterance: resample to 24 kHz (torchaudio's formula, `python_backends.tokenizer.resample`),
reflect-pad (1920 − 480) / 2 = 720 samples on each side, STFT with center=False, periodic Hann
1920, hop 480, magnitude sqrt(re² + im² + 1e-9), librosa's slaney mel filterbank (80 bins,
0–8 kHz, htk=False, norm="slaney", as `librosa.filters.mel` defaults), log(max(·, 1e-5)).
That gives len // 480 frames. EditX then casts the features to bf16 before the flow
(`tts.py`), so by default they are rounded through bf16 here too (`bf16_round=False` skips it).

`PromptMel.batch` computes a whole batch in one STFT on any torch device: each utterance is
reflect-padded at its own end (an index gather), so its frames equal a batch-1 run.
`prompt_mel_reference` is the same computation written plainly in numpy/librosa for tests.
The input is the mono prompt after EditX's peak cap (0.6), untrimmed.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch

from ..errors import InvalidInput
from ..tokenizer.resample import resample
from ..settings import DECODER

PAD = (DECODER.mel_n_fft - DECODER.mel_hop) // 2
LOG_FLOOR = 1e-5
MAGNITUDE_EPS = 1e-9


@functools.lru_cache(maxsize=1)
def mel_filterbank() -> np.ndarray:
    """librosa's slaney mel matrix float32 [80, 961] (what matcha's `mel_spectrogram` builds)."""
    import librosa

    return librosa.filters.mel(sr=DECODER.output_sample_rate, n_fft=DECODER.mel_n_fft,
                               n_mels=DECODER.mel_bins, fmin=0.0,
                               fmax=DECODER.mel_fmax).astype(np.float32)


def mel_frames(num_samples_24k: int) -> int:
    """Frames of a 24 kHz signal: (n + 2·720 − 1920) // 480 + 1 = n // 480."""
    return num_samples_24k // DECODER.mel_hop


def to_24k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 at `sample_rate` → 24 kHz; refuses signals reflect padding cannot take."""
    out = resample(np.asarray(audio, np.float32).reshape(-1), int(sample_rate),
                   DECODER.output_sample_rate)
    if len(out) <= PAD:
        raise InvalidInput("waveform", f"has {len(out)} samples at 24 kHz",
                           f"more than {PAD} (at least {PAD / DECODER.output_sample_rate:.2f} s)")
    return out


def reflect_pad_rows(x: torch.Tensor, lengths: torch.Tensor, pad: int) -> torch.Tensor:
    """[B, N] rows with valid lengths → [B, N + 2·pad]: each row reflect-padded at its own
    start and end (what F.pad(mode="reflect") does to the row alone), garbage after that."""
    width = x.shape[1]
    k = torch.arange(width + 2 * pad, device=x.device)[None, :] - pad
    last = lengths.to(x.device)[:, None] - 1
    idx = torch.where(k < 0, -k, torch.where(k > last, 2 * last - k, k)).clamp(0, width - 1)
    return torch.gather(x, 1, idx)


def round_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(torch.float32)


class PromptMel:
    """Batched prompt mel on `device` (CPU or CUDA)."""

    def __init__(self, device: str | torch.device = "cpu", bf16_round: bool = True):
        self.device = torch.device(device)
        self.bf16_round = bf16_round
        self.window = torch.hann_window(DECODER.mel_n_fft, device=self.device)
        self.basis = torch.from_numpy(mel_filterbank()).to(self.device)

    def batch(self, audios: Sequence[np.ndarray], sample_rates: Sequence[int]
              ) -> tuple[torch.Tensor, list[int]]:
        """Utterances (each at its own rate) → float32 [B, T_max, 80] on the device (rows past an
        utterance's T are zero) and each T."""
        waves = [to_24k(a, r) for a, r in zip(audios, sample_rates)]
        lengths = torch.tensor([len(w) for w in waves], device=self.device)
        buffer = torch.zeros(len(waves), int(lengths.max()), device=self.device)
        for i, w in enumerate(waves):
            buffer[i, :len(w)] = torch.from_numpy(w).to(self.device)
        spec = torch.stft(reflect_pad_rows(buffer, lengths, PAD), DECODER.mel_n_fft,
                          hop_length=DECODER.mel_hop, win_length=DECODER.mel_n_fft,
                          window=self.window, center=False, return_complex=True)
        magnitude = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + MAGNITUDE_EPS)
        mel = torch.log(torch.clamp(self.basis @ magnitude, min=LOG_FLOOR)).transpose(1, 2)
        frames = [mel_frames(len(w)) for w in waves]
        valid = torch.arange(mel.shape[1], device=self.device)[None, :] < torch.tensor(
            frames, device=self.device)[:, None]
        mel = mel * valid[:, :, None]
        return (round_bf16(mel) if self.bf16_round else mel), frames

    def __call__(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        mel, frames = self.batch([audio], [sample_rate])
        return mel[0, :frames[0]].cpu().numpy()


def prompt_mel(audio: np.ndarray, sample_rate: int, bf16_round: bool = True) -> np.ndarray:
    """One utterance on the CPU → float32 [T, 80], T = len_24k // 480."""
    return PromptMel("cpu", bf16_round)(audio, sample_rate)


def prompt_mel_reference(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """The same mel written plainly (numpy frames and FFT in float64, no bf16) for tests."""
    import scipy.signal

    y = to_24k(audio, sample_rate).astype(np.float64)
    y = np.pad(y, (PAD, PAD), mode="reflect")
    window = scipy.signal.get_window("hann", DECODER.mel_n_fft, fftbins=True)
    count = (len(y) - DECODER.mel_n_fft) // DECODER.mel_hop + 1
    frames = np.stack([y[t * DECODER.mel_hop: t * DECODER.mel_hop + DECODER.mel_n_fft]
                       for t in range(count)])
    spectrum = np.fft.rfft(frames * window, axis=1)
    magnitude = np.sqrt(spectrum.real ** 2 + spectrum.imag ** 2 + MAGNITUDE_EPS)
    mel = magnitude @ mel_filterbank().astype(np.float64).T
    return np.log(np.maximum(mel, LOG_FLOOR)).astype(np.float32)
