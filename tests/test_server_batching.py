"""Concurrency: requests of different lengths sent at once are batched by Triton's dynamic
batcher (executions < inferences) and each still gets exactly its own tokens."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from conftest import TEST_MAX_BATCH_SIZE, assert_tokens_equal, speech_clip

MEMBERS = ("preprocess", "vq02", "vq06", "token_merge")


def _all_at_once(function, items):
    """Call function(item) for every item from its own thread, released together."""
    start = threading.Barrier(len(items))

    def run(item):
        start.wait()
        try:
            return function(item)
        except Exception as exc:  # noqa: BLE001 - returned for the test to inspect
            return exc

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(run, items))


@pytest.fixture(scope="module")
def varied_clips():
    """16 clips from 0.6 s to 8.1 s, all different."""
    return [speech_clip(f"c{i}", 0.6 + 0.5 * i, seed=20 + i) for i in range(16)]


def test_16_concurrent_requests_are_batched_and_correct(varied_clips, grpc_client, reference):
    assert len(varied_clips) <= TEST_MAX_BATCH_SIZE
    want = [reference(c.samples, c.rate) for c in varied_clips]
    before = grpc_client.statistics()
    got = _all_at_once(lambda c: grpc_client.tokenize(c.samples, c.rate), varied_clips)
    times = grpc_client.stage_times(since=before)

    for clip, result, expected in zip(varied_clips, got, want):
        assert not isinstance(result, Exception), f"{clip}: {result}"
        assert_tokens_equal(result, expected)
    assert len({r["token_str"] for r in got}) == 16
    for model in MEMBERS:
        t = times[model]
        assert t["inferences"] == 16 and t["requests"] == 16, (model, t)
        assert t["executions"] < t["inferences"], (model, t)
        assert sum(size * n for size, n in t["batch_sizes"].items()) == 16, (model, t)
        assert max(t["batch_sizes"]) > 1, (model, t)
    assert times["audio_tokenizer"]["requests"] == 16


def test_bad_request_in_a_batch_fails_alone(varied_clips, grpc_client, reference):
    good = varied_clips[:6]
    bad_rate = ("bad_rate", np.ones(16000, np.float32), 7999)
    bad_nan = ("bad_nan", np.full(16000, np.nan, np.float32), 16000)
    items = [("good", c.samples, c.rate) for c in good] + [bad_rate, bad_nan]
    before = grpc_client.statistics()
    got = _all_at_once(lambda item: grpc_client.tokenize(item[1], item[2]), items)
    times = grpc_client.stage_times(since=before)

    for clip, result in zip(good, got[:6]):
        assert_tokens_equal(result, reference(clip.samples, clip.rate))
    assert str(got[6]) == ("in ensemble 'audio_tokenizer', input 'sample_rate': got 7999 Hz; "
                           "allowed: an integer from 8000 to 192000 Hz")
    assert str(got[7]) == ("in ensemble 'audio_tokenizer', input 'waveform': contains NaN or "
                           "Inf; allowed: finite float32 samples")
    assert got[6].status == got[7].status == "StatusCode.INVALID_ARGUMENT"
    pre = times["preprocess"]
    assert pre["inferences"] == 8 and pre["executions"] < 8, pre
    assert times["vq02"]["inferences"] == 6


def _vq02_request(client, audio):
    tensor = grpcclient.InferInput("audio_16k", [1, audio.size], "FP32")
    tensor.set_data_from_numpy(audio[None])
    return client.infer("vq02", [tensor]).as_numpy("vq02_codes")[0]


def test_member_model_isolates_bad_request_within_one_execution(varied_clips, triton_server,
                                                                grpc_client, reference):
    """vq02 runs all requests of an execute() in one tokenizer call; a request that fails
    validation there is answered alone and the others are still tokenized."""
    audios = [reference.preprocess(c.samples, c.rate) for c in varied_clips[:5]]
    items = audios + [np.array([0.0, np.inf], np.float32)]
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    before = grpc_client.statistics()
    got = _all_at_once(lambda audio: _vq02_request(client, audio), items)
    times = grpc_client.stage_times(since=before)

    for audio, result in zip(audios, got[:5]):
        np.testing.assert_array_equal(result, reference.vq02(audio))
    assert got[5].message() == ("input 'audio_16k': contains NaN or Inf; "
                                "allowed: finite float32 samples")
    assert times["vq02"]["inferences"] == 6 and times["vq02"]["executions"] < 6, times["vq02"]
