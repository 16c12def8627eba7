"""The streaming decoder's scheduler thread (python_backends.decoder.stream_scheduler): streams
pushed from several threads in pieces get exactly their lone audio when stepped one at a time,
the same chunks within the batch tolerance when batched, and cancel / bad ids / stop end only
the streams they concern, with a callback saying how."""
from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from python_backends.decoder.stream_scheduler import SchedulerStopped, StreamScheduler
from python_backends.decoder.streaming import StreamingToken2Wav, stream_samples
from python_backends.decoder.token2wav import Token2Wav
from python_backends.settings import EditxSettings
from test_streaming_token2wav import request, run_alone

pytestmark = pytest.mark.usefixtures("torch_one_thread")
WAIT_S = 120.0


@pytest.fixture(scope="module")
def decoder(tiny_editx, torch_one_thread):
    return StreamingToken2Wav.from_token2wav(Token2Wav.from_settings(EditxSettings(str(tiny_editx))))


class Collector:
    """One stream's callbacks: its chunks, then (last chunk, error) once."""

    def __init__(self):
        self.chunks: list[np.ndarray] = []
        self.done: queue.Queue = queue.Queue()

    def on_audio(self, wave):
        self.chunks.append(wave)

    def on_done(self, last, error):
        self.done.put((last, error))

    def result(self) -> tuple[list[np.ndarray], BaseException | None]:
        last, error = self.done.get(timeout=WAIT_S)
        assert self.done.empty()
        return self.chunks + ([last] if last is not None and last.size else []), error


def open_with(scheduler, req) -> tuple:
    out = Collector()
    handle = scheduler.open(req["prompt_ids"], req["prompt_mel"], req["speaker_embedding"],
                            req["seed"], out.on_audio, out.on_done)
    return handle, out


def feed_from_thread(handle, ids: np.ndarray, piece: int) -> threading.Thread:
    def run():
        for k in range(0, len(ids), piece):
            handle.push(ids[k:k + piece])
        handle.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


REQUESTS = [request(61, 4, seed=1), request(140, 6, seed=2), request(9, 3, seed=3)]


@pytest.mark.parametrize("max_batch", [1, 3])
def test_streams_fed_from_threads_get_their_lone_audio(decoder, max_batch):
    alone = [run_alone(decoder, r)[0] for r in REQUESTS]
    scheduler = StreamScheduler(decoder, max_batch=max_batch)
    try:
        opened = [open_with(scheduler, r) for r in REQUESTS]
        threads = [feed_from_thread(h, r["ids"], piece) for (h, _), r, piece
                   in zip(opened, REQUESTS, (1, 7, 4))]
        for thread in threads:
            thread.join()
        for (_, out), want, req in zip(opened, alone, REQUESTS):
            chunks, error = out.result()
            assert error is None
            assert [len(c) for c in chunks] == [len(c) for c in want]
            assert sum(len(c) for c in chunks) == stream_samples(len(req["ids"]))
            got, expected = np.concatenate(chunks), np.concatenate(want)
            if max_batch == 1:  # one stream per step: the lone computation exactly
                np.testing.assert_array_equal(got, expected)
            else:  # batched flow: last bits, grown by HiFT's phase (tests/test_streaming_token2wav.py)
                np.testing.assert_allclose(got, expected, rtol=0, atol=5e-3)
        assert scheduler.open_streams == 0
    finally:
        scheduler.stop()


def test_cancel_bad_ids_and_empty_streams_end_only_themselves(decoder):
    scheduler = StreamScheduler(decoder, max_batch=4)
    try:
        good, cancelled, bad, empty = (request(30, 3, seed=s) for s in (4, 5, 6, 7))
        (h_good, out_good), (h_cancel, out_cancel) = open_with(scheduler, good), open_with(scheduler, cancelled)
        (h_bad, out_bad), (h_empty, out_empty) = open_with(scheduler, bad), open_with(scheduler, empty)
        h_cancel.push(cancelled["ids"][:20])
        h_cancel.cancel()
        h_bad.push(np.array([65536 + 5120]))  # one past <audio_5119>
        h_empty.close()
        h_good.push(good["ids"])
        h_good.close()
        chunks, error = out_good.result()
        assert error is None and sum(len(c) for c in chunks) == stream_samples(30)
        last, error = out_bad.done.get(timeout=WAIT_S)
        assert last is None and isinstance(error, ValueError) and "<audio_5119>" in str(error)
        assert out_empty.result() == ([], None)
        assert scheduler.open_streams == 0
        assert out_cancel.done.empty() and out_cancel.chunks == []
    finally:
        scheduler.stop()


def test_stop_ends_open_streams_with_scheduler_stopped(decoder):
    scheduler = StreamScheduler(decoder, max_batch=2)
    handle, out = open_with(scheduler, request(30, 3, seed=8))
    handle.push(request(30, 3, seed=8)["ids"][:3])
    scheduler.stop()
    last, error = out.done.get(timeout=WAIT_S)
    assert last is None and isinstance(error, SchedulerStopped)
    with pytest.raises(SchedulerStopped):
        open_with(scheduler, request(10, 3, seed=9))


def test_max_batch_must_be_positive(decoder):
    with pytest.raises(ValueError, match="max_batch must be >= 1, got 0"):
        StreamScheduler(decoder, max_batch=0)
