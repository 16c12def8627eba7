"""Original preprocessing as Step-Audio writes it (torch tensors, one utterance):
channel mean, `torchaudio.transforms.Resample` (our formula copy), energy_norm_fn, trim_silence."""
from __future__ import annotations

import math

import librosa
import numpy as np
import torch

from ..resample import TRANSFORM, resample


def reference_preprocess(waveform: np.ndarray, sample_rate: int, channels: int = 1) -> np.ndarray:
    wav = torch.from_numpy(np.asarray(waveform, np.float32).reshape(-1, channels).T.copy())
    wav = wav.mean(dim=0, keepdim=True)  # torchaudio.load layout [C, N] → mono
    if sample_rate != 16000:
        wav = torch.from_numpy(resample(wav.numpy(), sample_rate, 16000, TRANSFORM))
    wav = wav / torch.clamp(wav.abs().max(), min=0.01) * 0.999  # energy_norm_fn
    audio = wav[0].numpy()
    _, (s, e) = librosa.effects.trim(audio, top_db=20, frame_length=512, hop_length=128)
    frames = math.ceil((e - s) / 240)
    start = s - 800
    if start < 0:
        audio = np.concatenate([np.zeros(-start, np.float32), audio])
        start = 0
    audio = audio[start:start + frames * 240 + 4320]
    need = frames * 240 + 4320 - len(audio)
    if need > 0:
        audio = np.concatenate([audio, np.zeros(need, np.float32)])
    return audio.astype(np.float32)
