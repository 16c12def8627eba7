"""One thread that decodes every open audio stream of a StreamingToken2Wav, batched.

Requests' threads push LLM ids into their stream's inbox and close it after the last id; only
the scheduler's thread touches the streams themselves. Each pass takes every stream that has
work (up to `max_batch`, least recently served first, so no stream starves), runs one
`StreamingToken2Wav.step` for all of them and hands each its audio: `on_audio(chunk)` for a
chunk, `on_done(last_chunk, None)` once the stream is finished, or `on_done(None, error)` when
it failed or the scheduler stopped. A cancelled stream is dropped at the next pass. A callback
that raises (its client went away) ends its own stream with that error, never the thread.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Callable

import numpy as np

from .streaming import AudioStream, StreamingToken2Wav

AudioCallback = Callable[[np.ndarray], None]
DoneCallback = Callable[[np.ndarray | None, BaseException | None], None]
LOG = logging.getLogger(__name__)


class SchedulerStopped(RuntimeError):
    """The scheduler stopped (model unload) before the stream finished."""


class StreamHandle:
    """A request's side of one stream: push ids, close, cancel (any thread)."""

    def __init__(self, scheduler: "StreamScheduler", stream: AudioStream,
                 on_audio: AudioCallback, on_done: DoneCallback):
        self._scheduler, self.stream = scheduler, stream
        self.on_audio, self.on_done = on_audio, on_done
        self.inbox: list[np.ndarray] = []
        self.closing = self.cancelled = False

    def push(self, ids: np.ndarray) -> None:
        with self._scheduler.wake:
            self.inbox.append(np.asarray(ids))
            self._scheduler.wake.notify()

    def close(self) -> None:
        """After the last id: the tail is decoded, then on_done."""
        with self._scheduler.wake:
            self.closing = True
            self._scheduler.wake.notify()

    def cancel(self) -> None:
        """Drop the stream; no callback is made for it after the pass under way."""
        with self._scheduler.wake:
            self.cancelled = True
            self._scheduler.wake.notify()


class StreamScheduler:
    def __init__(self, decoder: StreamingToken2Wav, max_batch: int, name: str = "stream_decoder",
                 on_streams: Callable[[int], None] = lambda count: None):
        """`on_streams(count)` whenever the number of open streams changes (a metric)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.decoder, self.max_batch = decoder, int(max_batch)
        self.wake = threading.Condition()
        self._handles: collections.OrderedDict[int, StreamHandle] = collections.OrderedDict()
        self._on_streams, self._reported = on_streams, 0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def open(self, prompt_ids, prompt_mel: np.ndarray, speaker_embedding: np.ndarray, seed: int,
             on_audio: AudioCallback, on_done: DoneCallback) -> StreamHandle:
        stream = self.decoder.open(prompt_ids, prompt_mel, speaker_embedding, seed)
        handle = StreamHandle(self, stream, on_audio, on_done)
        with self.wake:
            if self._stopped:
                raise SchedulerStopped("the streaming decoder has stopped")
            self._handles[id(handle)] = handle
            self._report()
            self.wake.notify()
        return handle

    @property
    def open_streams(self) -> int:
        with self.wake:
            return len(self._handles)

    def stop(self) -> None:
        """Every open stream ends with SchedulerStopped; the thread exits after its pass."""
        with self.wake:
            self._stopped = True
            self.wake.notify()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ the scheduler's thread

    def _report(self) -> None:
        """Under the lock."""
        if len(self._handles) != self._reported:
            self._reported = len(self._handles)
            try:
                self._on_streams(self._reported)
            except Exception:  # noqa: BLE001 - a metric must not stop the decoder
                LOG.exception("on_streams callback failed")

    def _take_inboxes(self) -> list[StreamHandle]:
        """Under the lock: inboxes into the streams, cancelled ones out; → the live handles."""
        live = []
        for key, handle in list(self._handles.items()):
            if handle.cancelled:
                del self._handles[key]
                continue
            try:
                for ids in handle.inbox:
                    handle.stream.push(ids)
                if handle.closing and not handle.stream.closed:
                    handle.stream.close()
            except Exception as exc:  # noqa: BLE001 - ids the stream refuses: this stream only
                del self._handles[key]
                _call_done(handle, None, exc)
                continue
            finally:
                handle.inbox.clear()
            live.append(handle)
        return live

    def _finish(self, handle: StreamHandle, last: np.ndarray | None,
                error: BaseException | None) -> None:
        with self.wake:
            self._handles.pop(id(handle), None)
            self._report()
        _call_done(handle, last, error)

    def _run(self) -> None:
        while True:
            with self.wake:
                while True:
                    if self._stopped:
                        handles = list(self._handles.values())
                        self._handles.clear()
                        self._report()
                        break
                    live = self._take_inboxes()
                    for handle in live:
                        if handle.stream.done:  # closed without ids: nothing to decode
                            self._handles.pop(id(handle), None)
                    self._report()
                    ready = [h for h in live if h.stream.ready][:self.max_batch]
                    finished = [h for h in live if h.stream.done]
                    if ready or finished:
                        for handle in ready:  # least recently served first next time
                            self._handles.move_to_end(id(handle))
                        break
                    self.wake.wait()
            if self._stopped:
                for handle in handles:
                    _call_done(handle, None, SchedulerStopped("the server stopped the streaming decoder"))
                return
            for handle in finished:
                _call_done(handle, np.zeros(0, np.float32), None)
            if ready:
                self._step(ready)

    def _step(self, ready: list[StreamHandle]) -> None:
        try:
            waves = self.decoder.step([h.stream for h in ready])
        except Exception as exc:  # noqa: BLE001 - a failed batch fails its streams, not the thread
            for handle in ready:
                self._finish(handle, None, exc)
            return
        for handle, wave in zip(ready, waves):
            if handle.cancelled:
                continue
            if handle.stream.done:
                self._finish(handle, wave if wave is not None else np.zeros(0, np.float32), None)
            elif wave is not None and wave.size:
                try:
                    handle.on_audio(wave)
                except Exception as exc:  # noqa: BLE001 - e.g. the client is gone: this stream ends
                    self._finish(handle, None, exc)


def _call_done(handle: StreamHandle, last: np.ndarray | None, error: BaseException | None) -> None:
    try:
        handle.on_done(last, error)
    except Exception:  # noqa: BLE001 - a failing callback must not stop the other streams
        LOG.exception("stream on_done callback failed")
