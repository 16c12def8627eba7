"""Voice clone end to end on the real server (tiny synthetic EditX weights), through the real
clients: the three ways to call it agree, concurrent clones keep their own results, a cached
voice skips the tokenizer and clones the same, bad input gets a clear error while the server
keeps serving, and token2wav called directly is sized and seeded as specified.

The synthetic LLM never emits EOT, so every clone passes max_new_tokens: it generates exactly
that many ids, the last is dropped (as the original does) and each 5 ids make 3 rows of 960
samples.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import queue
import re
import signal
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from client.clone_client import STREAM_MODEL, CloneClient
from client.triton_base import TokenizerError
from conftest import TEST_MAX_TEXT_CHARS, speech_clip, stereo_clip
from python_backends.settings import DECODER, LLM

TIMEOUT_S = 600.0  # other servers share the CPUs: never fail on a slow answer
PROMPT_TEXT = "This is the voice to clone."
TARGET_TEXT = "Hello, this is a cloned voice."
SHORT = 31  # max_new_tokens: 30 ids kept, 18 rows, 17280 samples (one stream chunk)
LONG = 61  # 60 ids kept, 36 rows, 34560 samples: more than one 1 s stream chunk


def expected_samples(max_new_tokens: int) -> int:
    return DECODER.samples_per_row * 3 * math.ceil((max_new_tokens - 1) / 5)


def assert_speech(wave: np.ndarray, rate: int, max_new_tokens: int) -> None:
    assert rate == DECODER.output_sample_rate == 24000
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert wave.size == expected_samples(max_new_tokens)
    assert np.isfinite(wave).all()
    assert np.abs(wave).max() > 1e-3 and wave.std() > 1e-4


@pytest.fixture(scope="module")
def voice():
    return speech_clip("voice", 2.0, seed=21)


@pytest.fixture(scope="module")
def grpc_clone(triton_server):
    with CloneClient(triton_server.grpc_url, "grpc", timeout_s=TIMEOUT_S) as client:
        yield client


@pytest.fixture(scope="module")
def http_clone(triton_server):
    with CloneClient(triton_server.http_url, "http", timeout_s=TIMEOUT_S) as client:
        yield client


@pytest.fixture(scope="module")
def good(grpc_clone, voice):
    """A valid clone (gRPC, seed 5) and what it returns: the reference the other tests meet."""
    def request(client: CloneClient, **overrides):
        options = {"seed": 5, "max_new_tokens": SHORT, **overrides}
        return client.clone(voice.samples, voice.rate, PROMPT_TEXT, TARGET_TEXT, **options)

    wave, rate = request(grpc_clone)
    assert_speech(wave, rate, SHORT)
    return request, wave


@pytest.fixture(scope="module")
def good_streamed(good, grpc_clone):
    """The same request over clone_stream (the streaming decoder's audio, not clone's)."""
    request, _ = good
    wave, rate = request(grpc_clone, stream=True)
    assert_speech(wave, rate, SHORT)
    return wave


# ------------------------------------------------------------------ 1. protocols


def stream_chunks(url: str, client: CloneClient, clip, seed: int, max_new_tokens: int):
    """The clone_stream responses one by one (the client joins them), each chunk's samples."""
    responses: queue.Queue = queue.Queue()
    raw = grpcclient.InferenceServerClient(url)
    raw.start_stream(callback=lambda result, error: responses.put((result, error)))
    chunks = []
    try:
        raw.async_stream_infer(STREAM_MODEL, client.inputs(
            clip.samples, clip.rate, PROMPT_TEXT, TARGET_TEXT, seed=seed,
            max_new_tokens=max_new_tokens), enable_empty_final_response=True)
        while True:
            result, error = responses.get(timeout=TIMEOUT_S)
            assert error is None, error
            wave = result.as_numpy("waveform")
            if wave is not None:
                assert int(result.as_numpy("sample_rate").reshape(-1)[0]) == 24000
                chunks.append(wave.reshape(-1))
            if result.get_response().parameters["triton_final_response"].bool_param:
                return chunks
    finally:
        raw.stop_stream()
        raw.close()


def test_grpc_http_and_stream_agree(triton_server, grpc_clone, http_clone, voice):
    options = dict(seed=9, max_new_tokens=LONG)
    unary, rate = grpc_clone.clone(voice.samples, voice.rate, PROMPT_TEXT, TARGET_TEXT, **options)
    assert_speech(unary, rate, LONG)
    assert set(grpc_clone.last_timing) >= {"prompt_encoder", "prompt_cached", "prompt_builder",
                                           "llm", "token2wav"}

    http, rate = http_clone.clone(voice.samples, voice.rate, PROMPT_TEXT, TARGET_TEXT, **options)
    assert rate == 24000
    np.testing.assert_allclose(http, unary, rtol=0, atol=1e-6)

    # streamed: the chunked decoder (tests/test_server_clone_stream.py), same length, other audio
    streamed, rate = grpc_clone.clone(voice.samples, voice.rate, PROMPT_TEXT, TARGET_TEXT,
                                      stream=True, **options)
    assert rate == 24000 and streamed.dtype == np.float32 and streamed.size == unary.size
    assert grpc_clone.first_chunk_s is not None and len(grpc_clone.chunk_seconds) == 2
    assert np.abs(streamed).max() > 1e-3 and np.abs(streamed - unary).max() > 1e-3

    chunks = stream_chunks(triton_server.grpc_url, grpc_clone, voice, **options)
    # 60 ids = 36 rows: a 15-row chunk less the 3840 samples held for the cross-fade, then the
    # rest (21 rows, fewer than the 24 + 3 look-ahead the next chunk needs) with them
    assert [c.size for c in chunks] == [15 * 960 - 3840, 21 * 960 + 3840]
    np.testing.assert_array_equal(np.concatenate(chunks), streamed)


def test_seed_changes_the_clone(good, grpc_clone):
    request, wave = good
    again, _ = request(grpc_clone)
    np.testing.assert_array_equal(again, wave)
    other, _ = request(grpc_clone, seed=6)
    assert other.size == wave.size and np.abs(other - wave).max() > 1e-3


# ------------------------------------------------------------------ 2. concurrency

CONCURRENT_ROUNDS = 4

def concurrent_requests():
    """8 voices (one stereo 44.1 kHz), seeds and lengths all different."""
    voices = [speech_clip(f"voice{i}", 1.0 + 0.25 * i, seed=31 + i) for i in range(7)]
    voices.append(stereo_clip("stereo_44k", 1.5, seed=40, rate=44100))
    return [dict(clip=clip, seed=100 + i, max_new_tokens=SHORT + 5 * (i % 4),
                 text=f"Sentence number {i} in its own voice.") for i, clip in enumerate(voices)]


def clone_one(url: str, r: dict) -> np.ndarray:
    """One request on its own connection, as an independent user sends it."""
    clip = r["clip"]
    with CloneClient(url, "grpc", timeout_s=TIMEOUT_S) as client:
        wave, rate = client.clone(clip.samples, clip.rate, PROMPT_TEXT, r["text"],
                                  channels=clip.channels, seed=r["seed"],
                                  max_new_tokens=r["max_new_tokens"])
    assert_speech(wave, rate, r["max_new_tokens"])
    return wave


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a tritonserver's Python stubs)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


@pytest.fixture
def own_server(server_repo, tmp_path):
    """A server of its own: the crash this test provokes must not take the session's down.
    A crashed tritonserver leaves stubs behind: they are killed afterwards."""
    from build_scripts.serve import TritonServer

    with TritonServer(server_repo, address="127.0.0.1", log_file=tmp_path / "server.log") as server:
        stubs = children(server.process.pid)
        yield server
    for pid in stubs:
        with contextlib.suppress(OSError):
            if b"triton_python_backend_stub" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)


def test_eight_concurrent_clones_get_their_own_result(own_server):
    requests = concurrent_requests()
    alone = [clone_one(own_server.grpc_url, r) for r in requests]
    for i in range(len(alone)):  # a mix-up would show: no two answers are alike
        for j in range(i):
            assert alone[i].size != alone[j].size or np.abs(alone[i] - alone[j]).max() > 1e-2

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        for _ in range(CONCURRENT_ROUNDS):
            together = list(pool.map(lambda r: clone_one(own_server.grpc_url, r), requests))
            for r, want, got in zip(requests, alone, together):
                assert got.size == want.size, r["clip"]
                # batched flow vs alone: last-bit differences, grown by voiced HiFT's phase
                np.testing.assert_allclose(got, want, rtol=0, atol=2e-3, err_msg=repr(r["clip"]))
    assert own_server.running()


# ------------------------------------------------------------------ 3. prompt cache


def cache_hits(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=60).read().decode()
    found = re.search(r'^clone_prompt_cache_hits\{[^}]*model="clone"[^}]*\} (\S+)$', text, re.M)
    assert found, "clone_prompt_cache_hits{model=\"clone\"} missing from the metrics"
    return float(found.group(1))


def vq02_inferences(client: CloneClient) -> int:
    return client.statistics()["vq02"]["inference_count"]


def test_second_clone_of_a_voice_skips_the_tokenizer(triton_server, grpc_clone):
    clip = speech_clip("cached_voice", 1.5, seed=51)

    def clone(text):
        wave, _ = grpc_clone.clone(clip.samples, clip.rate, PROMPT_TEXT, text, seed=3,
                                   max_new_tokens=SHORT)
        return wave, dict(grpc_clone.last_timing)

    tokens, hits = vq02_inferences(grpc_clone), cache_hits(triton_server.metrics_url)
    first, timing = clone(TARGET_TEXT)
    assert timing["prompt_cached"] is False
    assert vq02_inferences(grpc_clone) == tokens + 1
    assert cache_hits(triton_server.metrics_url) == hits

    tokens = vq02_inferences(grpc_clone)
    other, timing = clone("Another sentence in the same voice.")
    assert timing["prompt_cached"] is True
    again, timing = clone(TARGET_TEXT)
    assert timing["prompt_cached"] is True
    assert vq02_inferences(grpc_clone) == tokens
    assert cache_hits(triton_server.metrics_url) == hits + 2
    np.testing.assert_array_equal(again, first)
    assert np.abs(other - first).max() > 1e-3


# ------------------------------------------------------------------ 4. bad input


def with_nan(samples: np.ndarray) -> np.ndarray:
    out = samples.copy()
    out[1234] = np.nan
    return out


ENSEMBLE = "in ensemble 'prompt_encoder', "

# (case, the change to the good request given the voice, the whole message the client gets)
CLIENT_CASES = [
    ("empty_target_text", lambda v: dict(text=""),
     "input 'target_text': is empty; allowed: non-empty UTF-8 text"),
    ("blank_prompt_text", lambda v: dict(prompt_text=" \t\n "),
     "input 'prompt_text': is blank (only whitespace or invisible format characters); allowed: "
     "text with at least one visible character"),
    ("invisible_target_text", lambda v: dict(text="\u200b\u2060\ufeff"),
     "input 'target_text': is blank (only whitespace or invisible format characters); allowed: "
     "text with at least one visible character"),
    ("target_text_too_long", lambda v: dict(text="x" * (TEST_MAX_TEXT_CHARS + 1)),
     f"input 'target_text': has {TEST_MAX_TEXT_CHARS + 1} characters; allowed: at most "
     f"{TEST_MAX_TEXT_CHARS} characters (EditxSettings.max_target_text_chars)"),
    ("silent_prompt", lambda v: dict(waveform=np.zeros(32000, np.float32), rate=16000),
     ENSEMBLE + "input 'waveform': is silent (peak 0.00e+00); allowed: speech with a peak of "
                "at least 0.001"),
    ("prompt_too_short", lambda v: dict(waveform=v.samples[:v.rate // 10]),
     ENSEMBLE + "input 'waveform': lasts 0.1 s (2205 samples per channel at 22050 Hz); allowed: a "
                "voice prompt of at least 0.5 s (11025 samples per channel at 22050 Hz)"),
    ("nan_in_waveform", lambda v: dict(waveform=with_nan(v.samples)),
     "input 'waveform': contains NaN or Inf; allowed: finite float32 samples"),  # at the entry
    ("sample_rate_4000", lambda v: dict(rate=4000),
     "input 'sample_rate': got 4000 Hz; allowed: an integer from 8000 to 192000 Hz"),
]


def bad_request(voice, change) -> dict:
    return {"waveform": voice.samples, "rate": voice.rate, "prompt_text": PROMPT_TEXT,
            "text": TARGET_TEXT, **change(voice)}


@pytest.mark.parametrize("protocol", ["grpc", "http", "stream"])
@pytest.mark.parametrize("case, change, message", CLIENT_CASES, ids=[c[0] for c in CLIENT_CASES])
def test_bad_input_is_refused_and_server_keeps_serving(good, good_streamed, grpc_clone, http_clone,
                                                       voice, protocol, case, change, message):
    """The called model's message reaches the client unchanged, as an input error
    (INVALID_ARGUMENT / HTTP 400; a stream error carries no status)."""
    client = http_clone if protocol == "http" else grpc_clone
    request = bad_request(voice, change)
    with pytest.raises(TokenizerError) as info:
        client.clone(request["waveform"], request["rate"], request["prompt_text"], request["text"],
                     stream=protocol == "stream", seed=1, max_new_tokens=SHORT)
    assert str(info.value) == message
    if protocol != "stream":
        assert info.value.status in ("StatusCode.INVALID_ARGUMENT", "400"), info.value.status
    clone, want = good
    wave, _ = clone(client, stream=protocol == "stream")
    np.testing.assert_allclose(wave, good_streamed if protocol == "stream" else want, rtol=0, atol=1e-6)


def raw_clone(url: str, protocol: str, arrays: dict) -> None:
    """A request built by hand, to send what CloneClient never would."""
    module = grpcclient if protocol == "grpc" else httpclient
    client = module.InferenceServerClient(url)
    inputs = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), "BYTES" if array.dtype == np.object_
                                   else np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, **({"binary_data": True} if protocol == "http" else {}))
        inputs.append(tensor)
    try:
        client.infer("clone", inputs)
    finally:
        client.close()


def valid_arrays(voice) -> dict:
    return {"waveform": voice.samples[None], "sample_rate": np.array([[voice.rate]], np.int32),
            "channels": np.array([[1]], np.int32),
            "prompt_text": np.array([[PROMPT_TEXT.encode()]], np.object_),
            "target_text": np.array([[TARGET_TEXT.encode()]], np.object_),
            "seed": np.array([[5]], np.int64), "max_new_tokens": np.array([[SHORT]], np.int32)}


def without(arrays: dict, name: str) -> dict:
    return {k: v for k, v in arrays.items() if k != name}


# (case, the request arrays made from the good ones, the server's message)
RAW_CASES = [
    ("target_text_not_utf8", lambda a: {**a, "target_text": np.array([[b"caf\xc3("]], np.object_)},
     "input 'target_text': is not valid UTF-8 (byte 0xc3 at offset 3); allowed: UTF-8 text"),
    ("waveform_int16", lambda a: {**a, "waveform": (a["waveform"] * 32767).astype(np.int16)},
     "inference input 'waveform' data-type is 'INT16', but model 'clone' expects 'FP32'"),
    ("seed_int32", lambda a: {**a, "seed": a["seed"].astype(np.int32)},
     "inference input 'seed' data-type is 'INT32', but model 'clone' expects 'INT64'"),
    ("missing_prompt_text", lambda a: without(a, "prompt_text"),
     "input 'prompt_text': is missing; allowed: every request must carry it"),
]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("case, change, message", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_malformed_request_refused(triton_server, good, grpc_clone, voice, protocol, case, change,
                                   message):
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    with pytest.raises(InferenceServerException) as info:
        raw_clone(url, protocol, change(valid_arrays(voice)))
    assert message in info.value.message(), info.value.message()
    assert str(info.value.status()) in ("StatusCode.INVALID_ARGUMENT", "400")
    request, want = good
    np.testing.assert_array_equal(request(grpc_clone)[0], want)


# ------------------------------------------------------------------ 5. token2wav directly


def audio_ids(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` LLM ids in the 2 vq02 + 3 vq06 pattern the LLM emits."""
    codes = np.where(np.arange(count) % 5 < 2, rng.integers(0, 1024, count),
                     rng.integers(1024, LLM.audio_tokens, count))
    return (codes + LLM.audio_token_offset).astype(np.int32)


def token2wav_arrays(target_ids: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"target_ids": target_ids[None],
            "prompt_ids": audio_ids(rng, 15)[None],
            "prompt_mel": rng.standard_normal((1, 21, DECODER.mel_bins)).astype(np.float32),
            "speaker_embedding": rng.standard_normal((1, 192)).astype(np.float32),
            "seed": np.array([[seed]], np.int64)}


def token2wav(url: str, target_ids: np.ndarray, seed: int) -> np.ndarray:
    arrays = token2wav_arrays(target_ids, seed)
    client = grpcclient.InferenceServerClient(url)
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    try:
        wave = client.infer("token2wav", inputs, client_timeout=TIMEOUT_S).as_numpy("waveform")
    finally:
        client.close()
    assert wave.dtype == np.float32 and wave.shape[0] == 1 and np.isfinite(wave).all()
    return wave[0]


@pytest.mark.parametrize("ids, rows", [(10, 6), (7, 6), (20, 12), (1, 3)])
def test_token2wav_gives_960_samples_per_row(triton_server, ids, rows):
    wave = token2wav(triton_server.grpc_url, audio_ids(np.random.default_rng(ids), ids), seed=1)
    assert wave.size == DECODER.samples_per_row * rows == 960 * rows
    assert np.abs(wave).max() > 1e-3


def test_token2wav_seeded(triton_server):
    ids = audio_ids(np.random.default_rng(1), 15)
    first = token2wav(triton_server.grpc_url, ids, seed=11)
    np.testing.assert_array_equal(token2wav(triton_server.grpc_url, ids, seed=11), first)
    other = token2wav(triton_server.grpc_url, ids, seed=12)
    assert other.size == first.size and np.abs(other - first).max() > 1e-4


def test_token2wav_server_equals_in_process_bit_exactly_on_the_voiced_path(triton_server, tiny_editx,
                                                                         torch_one_thread):
    """The server's decoder is the in-process one, bit for bit (fp32, same seed), and the
    synthetic HiFT predicts voiced frames on the flow's mel, so HiFT's sine source is in it."""
    from python_backends.decoder.token2wav import Token2Wav
    from python_backends.settings import EditxSettings

    ids = audio_ids(np.random.default_rng(5), 40)
    served = token2wav(triton_server.grpc_url, ids, seed=9)
    arrays = token2wav_arrays(ids, seed=9)
    decoder = Token2Wav.from_settings(EditxSettings(str(tiny_editx)))
    item = {"target_ids": arrays["target_ids"][0], "prompt_ids": arrays["prompt_ids"][0],
            "prompt_mel": arrays["prompt_mel"][0], "speaker_embedding": arrays["speaker_embedding"][0],
            "seed": 9}
    np.testing.assert_array_equal(served, decoder.batch([item])[0])

    seen = {}
    original = decoder.hift.f0_predictor.forward
    decoder.hift.f0_predictor.forward = lambda mel: seen.setdefault("f0", original(mel))
    decoder.batch([item])
    voiced = float((seen["f0"] > decoder.hift.m_source.voiced_threshold).float().mean())
    assert voiced > 0.5, f"only {voiced:.0%} of the flow's frames are voiced"
