"""The prompt recording as EditX's decoder stages read it: mono, peak capped at 0.6, untrimmed.

The CosyVoice prompt mel and the CAM++ speaker embedding are computed from this signal
(step_audio_internals.md §1.1, §3.3); the tokenizer trims and normalises it further itself.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidInput
from ..tokenizer.preprocess import duration, mix_down, validate
from ..settings import DECODER, EditxSettings


def prompt_audio(waveform: np.ndarray, sample_rate: int, channels: int,
                 settings: EditxSettings) -> np.ndarray:
    """Interleaved float32 samples → float32 mono at `sample_rate`, peak at most 0.6.

    Refuses what cannot be a voice prompt: outside the rate / length limits, non-finite,
    shorter than `min_prompt_seconds`, or silent (peak below `min_prompt_peak`)."""
    validate(waveform, sample_rate, channels, settings)
    audio = mix_down(waveform, channels)
    least = math.ceil(settings.min_prompt_seconds * sample_rate)
    if audio.size < least:
        raise InvalidInput("waveform", f"lasts {duration(audio.size, sample_rate)}",
                           f"a voice prompt of at least {settings.min_prompt_seconds:g} s "
                           f"({least} samples per channel at {sample_rate} Hz)")
    peak = float(np.abs(audio).max())
    if peak < settings.min_prompt_peak:
        raise InvalidInput("waveform", f"is silent (peak {peak:.2e})",
                           f"speech with a peak of at least {settings.min_prompt_peak:g}")
    if peak > DECODER.prompt_peak_cap:  # EditX's `prompt_wav / norm * 0.6`, in that order
        audio = (audio / np.float32(peak) * np.float32(DECODER.prompt_peak_cap)).astype(np.float32)
    return audio
