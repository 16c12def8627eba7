"""Refusals that name what the client sent: a max_length shorter than the prompt, a recording
one sample too long or too short, and finite samples whose float32 mix-down would overflow."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from python_backends.decoder.prompt_audio import prompt_audio
from python_backends.errors import InvalidInput
from python_backends.llm.sampling import SamplingParams, request_max_length
from python_backends.settings import EditxSettings, TokenizerSettings
from python_backends.tokenizer.preprocess import mix_down, preprocess, validate

EDITX = EditxSettings("x")  # max_prompt_seconds 30, min_prompt_seconds 0.5


def tone(frames: int, channels: int, peak: float) -> np.ndarray:
    """Interleaved frames of a 200 Hz tone at 16 kHz, channel c at peak · (1 - c / 4)."""
    wave = np.sin(2 * np.pi * 200 * np.arange(frames) / 16000)
    return np.stack([wave * peak * (1 - c / 4) for c in range(channels)], axis=1).reshape(-1).astype(
        np.float32)


# --------------------------------------------------------------------------- max_length

@pytest.mark.parametrize("given,prompt,message", [
    (100, 154, "input 'max_length': is 100, but the prompt has 154 ids; allowed: more than the "
               "prompt's length (154) and at most 8192"),
    (154, 154, "input 'max_length': is 154, but the prompt has 154 ids; allowed: more than the "
               "prompt's length (154) and at most 8192"),
    (8193, 154, "input 'max_length': is 8193; allowed: an integer from 2 to 8192 (prompt + "
                "generated ids)"),
    (1, 154, "input 'max_length': is 1; allowed: an integer from 2 to 8192 (prompt + generated ids)"),
])
def test_max_length_shorter_than_the_prompt_is_named(given, prompt, message):
    with pytest.raises(InvalidInput) as caught:
        request_max_length(given, prompt, 8192)
    assert str(caught.value) == message


def test_max_length_defaults_and_fits():
    assert request_max_length(None, 154, 8192) == 8192
    assert request_max_length(155, 154, 8192) == 155
    # a prompt no max_length can hold is the prompt's fault (check_prompt names input_ids)
    assert request_max_length(100, 300, 300) == 100
    with pytest.raises(InvalidInput, match=r"^input 'input_ids': has 300 ids"):
        SamplingParams(max_length=100).check_prompt([1] * 300, 74752)


# --------------------------------------------------------------------------- duration

@pytest.mark.parametrize("channels", [1, 2])
def test_one_sample_too_long_visibly_exceeds_the_limit(channels):
    with pytest.raises(InvalidInput) as caught:
        prompt_audio(np.zeros(480001 * channels, np.float32), 16000, channels, EDITX)
    assert str(caught.value) == (
        "input 'waveform': lasts 30.0000625 s (480001 samples per channel at 16000 Hz); allowed: "
        "at most 30 s of audio (480000 samples per channel at 16000 Hz)")
    validate(np.zeros(480000 * channels, np.float32), 16000, channels, EDITX)


def test_tokenizer_length_limit_at_44100_hz():
    settings = TokenizerSettings("x")  # max_audio_seconds 120
    with pytest.raises(InvalidInput) as caught:
        preprocess(np.zeros(120 * 44100 + 1, np.float32), 44100, settings)
    assert str(caught.value) == (
        "input 'waveform': lasts 120.000022675737 s (5292001 samples per channel at 44100 Hz); "
        "allowed: at most 120 s of audio (5292000 samples per channel at 44100 Hz)")


def test_one_sample_too_short_visibly_misses_the_minimum():
    with pytest.raises(InvalidInput) as caught:
        prompt_audio(tone(7999, 1, 0.5), 16000, 1, EDITX)
    assert str(caught.value) == (
        "input 'waveform': lasts 0.4999375 s (7999 samples per channel at 16000 Hz); allowed: a "
        "voice prompt of at least 0.5 s (8000 samples per channel at 16000 Hz)")
    assert prompt_audio(tone(8000, 1, 0.5), 16000, 1, EDITX).size == 8000


# --------------------------------------------------------------------------- mix-down

def test_mix_down_is_the_originals_float32_mean():
    audio = tone(16000, 3, 0.9) + np.float32(1e-3)
    torch_mean = torch.from_numpy(audio.reshape(-1, 3).T.copy()).mean(dim=0).numpy()
    np.testing.assert_array_equal(mix_down(audio, 3), torch_mean)


@pytest.mark.parametrize("channels", [2, 3])
def test_samples_near_float32_max_mix_down_finite(channels):
    """Both capped (prompt_audio) or normalised (preprocess) to the same signal."""
    huge, small = tone(16000, channels, 3e38), tone(16000, channels, 0.9)
    mono = mix_down(huge, channels)
    assert np.isfinite(mono).all() and np.abs(mono).max() > 2e38
    np.testing.assert_allclose(mono / np.float32(3e38 / 0.9), mix_down(small, channels),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(prompt_audio(huge, 16000, channels, EDITX),
                               prompt_audio(small, 16000, channels, EDITX), rtol=1e-5, atol=1e-6)
    settings = TokenizerSettings("x")
    np.testing.assert_allclose(preprocess(huge, 16000, settings, channels),
                               preprocess(small, 16000, settings, channels), atol=1e-5)
