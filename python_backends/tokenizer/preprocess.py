"""Prompt audio → the 16 kHz, peak-normalised, silence-trimmed signal both tokenizers read.

Order as in Step-Audio `preprocess_wav`: resample, peak-normalise, trim. Extended beyond the
original: interleaved multi-channel input is mixed down, and rates from 8 kHz up are accepted
(the original asserts rate > 16 kHz). Every rejection names the input and the rule.
"""
from __future__ import annotations

import math

import librosa
import numpy as np

from ..errors import InvalidInput
from .resample import TRANSFORM, resample  # Step-Audio's tokenizer: transforms.Resample
from ..settings import ALGORITHM as A, TokenizerSettings


TAME_ABOVE = 2.0 ** 64  # far above any real recording (int16 full scale is 2^15)


def validate(waveform: np.ndarray, sample_rate: int, channels: int,
             settings: TokenizerSettings) -> None:
    if not settings.min_sample_rate <= sample_rate <= settings.max_sample_rate:
        raise InvalidInput("sample_rate", f"got {sample_rate} Hz",
                           f"an integer from {settings.min_sample_rate} to {settings.max_sample_rate} Hz")
    if channels < 1:
        raise InvalidInput("channels", f"got {channels}", "an integer >= 1")
    if waveform.ndim != 1:
        raise InvalidInput("waveform", f"has rank {waveform.ndim}", "a 1-D float32 array of samples")
    if waveform.size == 0:
        raise InvalidInput("waveform", "is empty", "at least one sample")
    if waveform.size % channels:
        raise InvalidInput("waveform", f"holds {waveform.size} samples, not a multiple of {channels} channels",
                           "interleaved frames of `channels` samples")
    frames, most = waveform.size // channels, math.floor(settings.max_audio_seconds * sample_rate)
    if frames > most:
        raise InvalidInput("waveform", f"lasts {duration(frames, sample_rate)}",
                           f"at most {settings.max_audio_seconds:g} s of audio "
                           f"({most} samples per channel at {sample_rate} Hz)")
    if not np.isfinite(waveform).all():
        raise InvalidInput("waveform", "contains NaN or Inf", "finite float32 samples")


def duration(frames: int, sample_rate: int) -> str:
    """`frames` as seconds with the digits that tell them from a limit one sample away (a
    rounded "30.00 s" looks allowed), and as the sample count."""
    return f"{frames / sample_rate:.15g} s ({frames} samples per channel at {sample_rate} Hz)"


def mix_down(waveform: np.ndarray, channels: int) -> np.ndarray:
    """Interleaved float32 frames → their float32 channel mean, summed in float32 as the
    original's torch mean does. Finite samples near ±3.4e38 overflow that sum: then it is taken
    in float64, whose mean always fits float32 again."""
    audio = waveform.astype(np.float32, copy=False)
    if channels == 1:
        return audio
    frames = audio.reshape(-1, channels)
    with np.errstate(over="ignore"):
        mono = frames.mean(axis=1, dtype=np.float32)
    if np.isfinite(mono).all():
        return mono
    return frames.mean(axis=1, dtype=np.float64).astype(np.float32)


def peak_normalise(audio: np.ndarray) -> np.ndarray:
    peak = max(float(np.abs(audio).max()), A.peak_floor)
    return (audio / np.float32(peak) * np.float32(A.peak_target)).astype(np.float32)


def trim_silence(audio: np.ndarray) -> np.ndarray:
    """librosa trim (top_db 20), then 0.05 s left context and whole 15 ms units + 0.27 s."""
    _, (start, end) = librosa.effects.trim(audio, top_db=A.trim_top_db,
                                           frame_length=A.trim_frame_length,
                                           hop_length=A.trim_hop_length)
    length = math.ceil((end - start) / A.trim_unit) * A.trim_unit + A.trim_right_extra
    begin = start - A.trim_left_context
    out = np.zeros(length, np.float32)
    left_pad = max(0, -begin)
    piece = audio[max(0, begin):max(0, begin) + length - left_pad]
    out[left_pad:left_pad + len(piece)] = piece
    return out


def preprocess(waveform: np.ndarray, sample_rate: int, settings: TokenizerSettings,
               channels: int = 1) -> np.ndarray:
    """Interleaved float32 samples at `sample_rate` → float32 16 kHz mono, normalised, trimmed."""
    validate(waveform, sample_rate, channels, settings)
    audio = mix_down(waveform, channels)
    return trim_silence(peak_normalise(resample(tame(audio), sample_rate, A.sample_rate, TRANSFORM)))


def tame(audio: np.ndarray) -> np.ndarray:
    """Samples so large that resampling would overflow float32 (finite, but near 3.4e38) are
    scaled by a power of two: exact in floating point, and the peak normalisation after the
    resampler removes the scale again, so the result equals the ideal one."""
    peak = float(np.abs(audio).max())
    if peak <= TAME_ABOVE:
        return audio
    return (audio * np.float32(2.0 ** -math.ceil(math.log2(peak / TAME_ABOVE)))).astype(np.float32)
