"""`clone_stream` on a real tritonserver: audio chunks while the LLM still generates, the chunks
of the streaming decoder (upstream's CosyVoice_stream_impl_) exactly, concurrent streams equal
to their solo runs, and a cancelled stream that frees the LLM and the decoder.

The in-process side of the comparisons gets the same LLM ids from the server's own models
(prompt_encoder → prompt_builder → llm, same seed) and decodes them with
python_backends.decoder.streaming alone, on one thread as the server's stubs run."""
from __future__ import annotations

import concurrent.futures
import json
import queue
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from client.clone_client import STREAM_MODEL, CloneClient
from client.triton_base import infer_inputs
from conftest import speech_clip
from python_backends.decoder.reference_streaming import ReferenceStream
from python_backends.decoder.streaming import StreamingToken2Wav, stream_samples
from python_backends.decoder.token2wav import Token2Wav
from python_backends.settings import EditxSettings
from test_server_lifecycle import metric, metrics, wait_for

TIMEOUT_S = 600.0
PROMPT_TEXT = "This is the voice to clone."
TARGET_TEXT = "Hello, this is a streamed voice."


@pytest.fixture(scope="module")
def voice():
    return speech_clip("stream_voice", 2.0, seed=23)


@pytest.fixture(scope="module")
def token2wav(tiny_editx, torch_one_thread):
    return Token2Wav.from_settings(EditxSettings(str(tiny_editx)))


def server_ids(url: str, clip, text: str, seed: int, max_new_tokens: int) -> tuple[dict, np.ndarray]:
    """(prompt features, generated ids) from the server's own stage models."""
    client = grpcclient.InferenceServerClient(url)
    try:
        audio = {"waveform": clip.samples[None], "sample_rate": np.array([[clip.rate]], np.int32),
                 "channels": np.array([[clip.channels]], np.int32)}
        enc = client.infer("prompt_encoder", infer_inputs(grpcclient, audio), client_timeout=TIMEOUT_S)
        features = {n: enc.as_numpy(n)[0] for n in ("merged_ids", "prompt_mel", "speaker_embedding")}
        built = client.infer("prompt_builder", infer_inputs(grpcclient, {
            "prompt_text": np.array([[PROMPT_TEXT.encode()]], np.object_),
            "target_text": np.array([[text.encode()]], np.object_),
            "token_str": enc.as_numpy("token_str"), "waveform": audio["waveform"],
            "channels": audio["channels"]}), client_timeout=TIMEOUT_S)
        generated = client.infer("llm", infer_inputs(grpcclient, {
            "input_ids": built.as_numpy("input_ids").astype(np.int32),
            "seed": np.array([[seed]], np.int64),
            "max_new_tokens": np.array([[max_new_tokens]], np.int32)}), client_timeout=TIMEOUT_S)
        return features, generated.as_numpy("output_ids")[0]
    finally:
        client.close()


def decode_alone(token2wav, features: dict, ids: np.ndarray, seed: int) -> list[np.ndarray]:
    decoder = StreamingToken2Wav.from_token2wav(token2wav)
    stream = decoder.open(features["merged_ids"], features["prompt_mel"],
                          features["speaker_embedding"], seed)
    return stream.feed(ids) + stream.finish()


class StreamCall:
    """One clone_stream request on its own gRPC stream: the chunks and when each arrived."""

    def __init__(self, url: str, clip, text: str, seed: int, max_new_tokens: int):
        self.responses: queue.Queue = queue.Queue()
        self.client = grpcclient.InferenceServerClient(url)
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))
        with CloneClient(url, "grpc") as builder:
            inputs = builder.inputs(clip.samples, clip.rate, PROMPT_TEXT, text, channels=clip.channels,
                                    seed=seed, max_new_tokens=max_new_tokens)
        self.started = time.monotonic()
        self.client.async_stream_infer(STREAM_MODEL, inputs, enable_empty_final_response=True)
        self.chunks: list[np.ndarray] = []
        self.arrivals: list[float] = []
        self.timing: dict = {}

    def next(self):
        """The next response → (waveform or None, final)."""
        result, error = self.responses.get(timeout=TIMEOUT_S)
        assert error is None, error
        wave = result.as_numpy("waveform")
        if wave is not None and wave.size:
            self.chunks.append(wave.reshape(-1))
            self.arrivals.append(time.monotonic() - self.started)
        timing = result.as_numpy("timing")
        if timing is not None:
            self.timing = json.loads(timing.reshape(-1)[0])
        return wave, result.get_response().parameters["triton_final_response"].bool_param

    def run(self) -> "StreamCall":
        try:
            while not self.next()[1]:
                pass
            self.total = time.monotonic() - self.started
        finally:
            self.close()
        return self

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def test_chunks_are_the_streaming_decoders_and_arrive_while_the_llm_generates(
        triton_server, token2wav, voice):
    """400 ids: 240 rows → chunks of 15, 24, 48, 48, 48, 48 rows and a last one of 9; the first
    leaves the server before the LLM's last id, and every chunk equals the streaming decoder
    run alone on the same ids (one stream per step: bit for bit)."""
    seed, new_tokens = 11, 401
    call = StreamCall(triton_server.grpc_url, voice, TARGET_TEXT, seed, new_tokens).run()
    features, ids = server_ids(triton_server.grpc_url, voice, TARGET_TEXT, seed, new_tokens)
    assert ids.size == 400
    rows = [15, 24, 48, 48, 48, 48, 9]
    fade = 8 * 480
    assert [c.size for c in call.chunks] == (
        [rows[0] * 960 - fade] + [r * 960 for r in rows[1:-1]] + [rows[-1] * 960 + fade])
    assert sum(c.size for c in call.chunks) == stream_samples(400) == 240 * 960
    want = decode_alone(token2wav, features, ids, seed)
    for got, expected in zip(call.chunks, want):
        np.testing.assert_array_equal(got, expected)
    # the first audio left before generation ended (server's own clock) and arrived early
    t = call.timing
    assert t["first_audio"] < t["prompt_encoder"] + t["prompt_builder"] + t["llm"], t
    assert call.arrivals[0] < 0.6 * call.total, (call.arrivals, call.total)
    assert set(t) >= {"prompt_encoder", "prompt_cached", "prompt_builder", "llm", "token2wav",
                      "first_audio"}


def test_stream_follows_upstreams_streaming_algorithm(triton_server, token2wav, voice):
    """The plain one-stream transcription of upstream's CosyVoice_stream_impl_, fed one id per
    call as upstream's caller does: same chunk lengths; audio as close as the flow's rounding,
    grown by HiFT's phase, allows (tests/test_streaming_token2wav.py)."""
    seed, new_tokens = 12, 121
    chunks = StreamCall(triton_server.grpc_url, voice, TARGET_TEXT, seed, new_tokens).run().chunks
    features, ids = server_ids(triton_server.grpc_url, voice, TARGET_TEXT, seed, new_tokens)
    ref = ReferenceStream(token2wav.flow.model, token2wav.flow.noise, token2wav.hift,
                          features["merged_ids"], features["prompt_mel"],
                          features["speaker_embedding"], seed)
    calls = [ref.token2wav_stream([int(i) - 65536], last_chunk=False) for i in ids]
    calls.append(ref.token2wav_stream([], last_chunk=True))
    upstream = [np.asarray(c, np.float32).reshape(-1) for c in calls if c is not None]
    assert [c.size for c in chunks] == [c.size for c in upstream]
    np.testing.assert_allclose(np.concatenate(chunks), np.concatenate(upstream), rtol=0, atol=2e-2)


def test_eight_concurrent_streams_each_equal_their_solo_run(triton_server):
    voices = [speech_clip(f"stream{i}", 1.0 + 0.25 * i, seed=51 + i) for i in range(8)]
    requests = [dict(clip=clip, seed=200 + i, max_new_tokens=61 + 25 * (i % 4),
                     text=f"Streamed sentence number {i}.") for i, clip in enumerate(voices)]

    def one(r):
        return StreamCall(triton_server.grpc_url, r["clip"], r["text"], r["seed"],
                          r["max_new_tokens"]).run().chunks

    alone = [one(r) for r in requests]
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(one, requests))
    for r, want, got in zip(requests, alone, together):
        assert [c.size for c in got] == [c.size for c in want], r["clip"]
        assert sum(c.size for c in got) == stream_samples(r["max_new_tokens"] - 1)
        # batched flow vs alone: last bits, grown by HiFT's phase; a mix-up would be > 1e-2
        np.testing.assert_allclose(np.concatenate(got), np.concatenate(want), rtol=0, atol=5e-3,
                                   err_msg=repr(r["clip"]))


def test_a_cancelled_stream_frees_the_llm_and_the_decoder(triton_server, voice):
    """A client that cancels after its first chunk of a 3000-id clone: the LLM's sequences and
    the decoder's streams are back to 0, the request counts as cancelled, and the next stream
    is as fast as before."""
    def short() -> float:
        return StreamCall(triton_server.grpc_url, voice, TARGET_TEXT, 3, 61).run().total

    short()
    solo = sorted(short() for _ in range(3))[1]
    before = metrics(triton_server)
    call = StreamCall(triton_server.grpc_url, voice, TARGET_TEXT, 4, 3000)
    while not call.chunks:
        assert not call.next()[1], "the 3000-id stream ended before its first chunk"
    call.close(cancel=True)

    def settled():
        now = metrics(triton_server)
        return (metric(now, "step_audio_llm_sequences") == 0
                and metric(now, "step_audio_decoder_streams", model="clone_stream") == 0
                and metric(now, "step_audio_requests_in_flight", model="clone_stream") == 0)
    assert wait_for(settled, 30.0), metrics(triton_server)
    after = metrics(triton_server)
    grew = {o: metric(after, "step_audio_requests_total", model="clone_stream", outcome=o)
            - metric(before, "step_audio_requests_total", model="clone_stream", outcome=o)
            for o in ("success", "cancelled", "error")}
    assert grew == {"success": 0, "cancelled": 1, "error": 0}, grew
    generated = (metric(after, "step_audio_llm_generated_ids_total")
                 - metric(before, "step_audio_llm_generated_ids_total"))
    assert generated < 3000 / 4
    assert short() <= 3 * solo + 0.5
