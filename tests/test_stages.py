"""Each fast stage equals the original algorithm (python_backends.tokenizer.reference) on tiny weights.
No server involved."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from build_scripts.espeak_clips import speech_of_duration
from build_scripts.make_synthetic_weights import build
from python_backends.errors import InvalidInput
from python_backends.tokenizer.fbank_frontend import stream_frame_count
from python_backends.tokenizer.pipeline import FastTokenizer
from python_backends.tokenizer.preprocess import preprocess
from python_backends.tokenizer.reference import ReferenceTokenizer
from python_backends.tokenizer.reference.merge import reference_merge
from python_backends.tokenizer.reference.preprocess import reference_preprocess
from python_backends.tokenizer.reference.vq06 import _whisper_log_mel
from python_backends.tokenizer.resample import resample
from python_backends.settings import TokenizerSettings
from python_backends.tokenizer.token_merge import merge_tokens
from python_backends.tokenizer.whisper_mel import log_mel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def settings() -> TokenizerSettings:
    return TokenizerSettings(weights_dir=str(build("tiny", ROOT / "build" / "weights" / "tiny")))


@pytest.fixture(scope="module")
def fast(settings):
    return FastTokenizer(settings)


@pytest.fixture(scope="module")
def ref(settings):
    return ReferenceTokenizer(settings)


def clip16k(seconds: float, seed: int) -> np.ndarray:
    audio, rate = speech_of_duration(seconds, seed=seed)
    return resample(audio, rate, 16000)


# ---- preprocess -------------------------------------------------------------------------------

@pytest.mark.parametrize("rate,channels", [(16000, 1), (44100, 2), (48000, 1), (8000, 1), (22050, 3)])
def test_preprocess_equals_reference(settings, rate, channels):
    audio, native = speech_of_duration(2.5, seed=3)
    audio = resample(audio, native, rate)
    audio = np.concatenate([np.zeros(rate // 2, np.float32), audio, np.zeros(rate // 3, np.float32)])
    interleaved = np.stack([audio * (0.4 + 0.3 * c) for c in range(channels)], axis=1).reshape(-1)
    fast_out = preprocess(interleaved, rate, settings, channels)
    ref_out = reference_preprocess(interleaved, rate, channels)
    np.testing.assert_array_equal(fast_out, ref_out)
    assert fast_out.dtype == np.float32
    assert (len(fast_out) - 4320) % 240 == 0
    assert np.isclose(np.abs(fast_out).max(), 0.999, atol=1e-6)


def test_resample_keeps_tone_and_length():
    t = np.arange(44100) / 44100
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = resample(tone, 44100, 16000)
    assert out.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(out[2000:14000]))
    assert abs(np.argmax(spectrum) * 16000 / 12000 - 440) < 2
    assert resample(tone, 16000, 16000) is tone
    assert resample(tone[:8000], 8000, 16000).shape == (16000,)


@pytest.mark.parametrize("waveform,rate,channels,needle", [
    (np.zeros(0, np.float32), 16000, 1, "input 'waveform': is empty"),
    (np.array([0.1, np.nan], np.float32), 16000, 1, "input 'waveform': contains NaN or Inf"),
    (np.array([0.1, np.inf], np.float32), 16000, 1, "input 'waveform': contains NaN or Inf"),
    (np.zeros((2, 3), np.float32), 16000, 1, "input 'waveform': has rank 2"),
    (np.zeros(10, np.float32), 0, 1, "input 'sample_rate': got 0 Hz; allowed: an integer from 8000"),
    (np.zeros(10, np.float32), 7999, 1, "input 'sample_rate': got 7999 Hz"),
    (np.zeros(10, np.float32), 16000, 0, "input 'channels': got 0"),
    (np.zeros(11, np.float32), 16000, 2, "not a multiple of 2 channels"),
    (np.zeros(16000 * 121, np.float32), 16000, 1, "input 'waveform': lasts 121 s (1936000 samples per "
                                                  "channel at 16000 Hz); allowed: at most 120 s of audio "
                                                  "(1920000 samples per channel at 16000 Hz)"),
])
def test_preprocess_rejects_bad_input(settings, waveform, rate, channels, needle):
    with pytest.raises(InvalidInput) as err:
        preprocess(waveform, rate, settings, channels)
    assert needle in str(err.value)


# ---- vq02 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_samples", [4320, 4800, 3840 * 3, 3840 * 3 + 400, 3840 * 3 + 700,
                                         3840 * 7 + 1279, 3840 * 7 + 1400, 16000 * 5 + 11])
def test_stream_frame_count_matches_reference_loop(ref, num_samples):
    audio = clip16k(num_samples / 16000 + 0.1, seed=1)[:num_samples]
    enc = ref.vq02.encode(audio)
    assert len(enc) == stream_frame_count(num_samples)
    # the reference's own raw loop may emit extra tail frames, never fewer
    assert stream_frame_count(num_samples) >= 4 * (num_samples // 3840)


def test_vq02_equals_reference_one_batch(fast, ref):
    audios = [clip16k(s, seed=i) for i, s in enumerate([0.3, 1.0, 2.9, 3.84, 7.7, 12.3])]
    batched = fast.vq02(audios)
    for audio, codes in zip(audios, batched):
        expected = ref.vq02(audio)
        assert codes.dtype == np.int32
        np.testing.assert_array_equal(codes, expected)
        np.testing.assert_array_equal(fast.vq02([audio])[0], codes)
    assert len(np.unique(np.concatenate(batched))) > 20


def test_vq02_encoder_output_close_to_reference(fast, ref):
    audio = clip16k(6.1, seed=7)
    feats = fast.vq02.frontend(audio)
    _, enc = fast.vq02.model.encode(torch.from_numpy(feats), [len(feats)])
    assert float((enc - ref.vq02.encode(audio)).abs().max()) < 1e-4


# ---- vq06 -------------------------------------------------------------------------------------

def test_whisper_log_mel_equals_s3tokenizer():
    piece = clip16k(3.3, seed=2)
    expected = _whisper_log_mel()(torch.from_numpy(piece), n_mels=128)
    got = log_mel(piece)
    assert got.shape == (128, len(piece) // 160)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_vq06_equals_reference_padded_batch(fast, ref):
    audios = [clip16k(s, seed=10 + i) for i, s in enumerate([0.5, 3.0, 9.7, 31.0])]
    for audio, codes in zip(audios, fast.vq06(audios)):
        np.testing.assert_array_equal(codes, ref.vq06(audio))
        assert abs(len(codes) - len(audio) / 16000 * 25) <= 2
    assert len(fast.vq06.__call__([audios[3]])[0]) == 775


# ---- merge and whole chain --------------------------------------------------------------------

@pytest.mark.parametrize("n02,n06", [(0, 0), (1, 5), (2, 3), (5, 3), (9, 14), (167, 250)])
def test_merge_equals_reference(n02, n06):
    rng = np.random.default_rng(n02 * 1000 + n06)
    a, b = rng.integers(0, 1024, n02), rng.integers(0, 4096, n06)
    ids, text = merge_tokens(a, b)
    ref_ids, ref_text = reference_merge(a.tolist(), b.tolist())
    assert ids.tolist() == ref_ids and text == ref_text
    assert ids.dtype == np.int32 and len(ids) == 5 * min(n02 // 2, n06 // 3)


def test_merge_layout():
    ids, text = merge_tokens(np.array([1, 2, 3]), np.array([0, 4095, 7, 9]))
    assert ids.tolist() == [65537, 65538, 66560, 70655, 66567]
    assert text == "<audio_1><audio_2><audio_1024><audio_5119><audio_1031>"


def test_pipeline_equals_reference(fast, ref):
    audio, rate = speech_of_duration(4.2, seed=4)
    got = fast([(audio, rate)])[0]
    want = ref(audio, rate)
    np.testing.assert_array_equal(got.vq02, want.vq02)
    np.testing.assert_array_equal(got.vq06, want.vq06)
    np.testing.assert_array_equal(got.merged_ids, want.merged_ids)
    assert got.token_str == want.token_str


def test_vq06_engine_client_gets_the_padded_batch(settings, fast):
    """With an engine client (GPU repositories: BLS to the engine model) the same padded batch
    goes to the engine model instead of the in-process session."""
    from python_backends.onnx_runtime import onnx_session
    from python_backends.tokenizer.vq06 import Vq06Tokenizer

    session = onnx_session(str(settings.speech_tokenizer_path))
    calls = []

    class Engine:
        def infer(self, inputs, outputs):
            calls.append((tuple(inputs["feats"].shape), inputs["feats_length"].tolist(), outputs))
            feeds = {"feats": inputs["feats"].numpy(), "feats_length": inputs["feats_length"].numpy()}
            return {"indices": session.run(None, feeds)[0]}

    remote = Vq06Tokenizer(str(settings.speech_tokenizer_path), engine_client=Engine())
    audios = [clip16k(s, seed=20 + i) for i, s in enumerate([1.2, 4.0])]
    for got, want in zip(remote(audios), fast.vq06(audios)):
        np.testing.assert_array_equal(got, want)
    assert calls == [((2, 128, 400), [120, 400], ["indices"])]


def test_vq02_bf16_precision_mostly_agrees(settings, fast):
    """bf16 autocast is a speed knob, not a faithful mode: codes keep their shape and mostly agree."""
    import dataclasses

    from python_backends.tokenizer.vq02 import Vq02Tokenizer

    audios = [clip16k(s, seed=30 + i) for i, s in enumerate([2.0, 6.5])]
    bf16 = Vq02Tokenizer.from_settings(dataclasses.replace(settings, vq02_precision="bf16"))
    got, want = bf16(audios), fast.vq02(audios)
    assert [len(g) for g in got] == [len(w) for w in want]
    assert all(g.dtype == np.int32 for g in got)
    agreement = np.mean(np.concatenate(got) == np.concatenate(want))
    assert agreement > 0.8
    with pytest.raises(ValueError, match="bf16 with the torch engine only"):
        Vq02Tokenizer.from_settings(dataclasses.replace(settings, vq02_precision="bf16", vq02_engine="onnx"))
