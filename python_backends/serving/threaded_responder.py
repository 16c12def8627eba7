"""Answering requests from worker threads, so one model instance serves many at once.

Every call into the stub's IPC holds stub.STUB_IPC_LOCK (Triton 2.51 crashes otherwise).

The `llm` and `clone` models spend most of a request waiting on other models (BLS) whose
own schedulers batch across requests; answering in `execute` one request at a time would
serialise them and leave those batches empty. Instead `execute` hands each request to a
thread pool and returns None; the worker answers through the request's response sender with
the FINAL flag (Triton >= 24.07 allows this for non-decoupled models too). A decoupled model
can send partial responses first with `Answer.partial`.

Because `execute` returns at once, Triton believes nothing is in flight: this class keeps the
books instead. Each request is answered exactly once (its worker's answer, or UNAVAILABLE when
the server drains or the model unloads first), counted by outcome in ModelMetrics, and never
touched after its final response.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Sequence

from . import stub, triton_io
from ..errors import EXPECTED_OUTCOMES, Unavailable, outcome
from .metrics import ModelMetrics
from .shutdown import draining, watch_abort


class Answer:
    """One request's response sender, answered once: later sends (a worker finishing after the
    model answered UNAVAILABLE at unload) are dropped, and nothing asks about it afterwards."""

    def __init__(self, request, metrics: ModelMetrics):
        self.request, self.metrics = request, metrics
        self.started = time.perf_counter()
        self._lock = threading.Lock()
        self.final_sent = False
        with stub.STUB_IPC_LOCK:
            self.sender = request.get_response_sender()

    def is_cancelled(self) -> bool:
        """Whether the client cancelled (or its deadline passed); False once answered."""
        with self._lock:
            return not self.final_sent and stub.is_cancelled(self.request)

    def partial(self, outputs: list) -> None:
        response = stub.pb().InferenceResponse(output_tensors=outputs)
        with self._lock:
            if not self.final_sent:
                with stub.STUB_IPC_LOCK:
                    self.sender.send(response)

    def final(self, outputs: list | None = None, error: BaseException | None = None) -> bool:
        """Send the final response (outputs, or the error's); False if one was sent already."""
        pb = stub.pb()
        response = (triton_io.error_response(error) if error is not None
                    else pb.InferenceResponse(output_tensors=outputs))
        with self._lock:
            if self.final_sent:
                return False
            self.final_sent = True
            # counted before the send: a client that has its answer reads metrics that include it
            self.metrics.answered(outcome(error), time.perf_counter() - self.started)
            try:
                with stub.STUB_IPC_LOCK:
                    self.sender.send(response, flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as exc:  # noqa: BLE001 - the client is gone (e.g. cancelled): nothing to tell
                stub.log_warning(f"final response not delivered ({outcome(error)}): {exc}")
            finally:
                self.metrics.delivered()
        return True


class ThreadedResponder:
    """`max_workers` daemon threads: a worker still blocked on a model that went away (BLS
    calls have no timeout) must not hold the stub's exit, as ThreadPoolExecutor's joined
    workers would."""

    def __init__(self, max_workers: int, name: str, metrics: ModelMetrics):
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._workers = [threading.Thread(target=self._run, name=f"{name}_{i}", daemon=True)
                         for i in range(max_workers)]
        for worker in self._workers:
            worker.start()
        self.metrics = metrics
        self._open: set[Answer] = set()
        self._lock = threading.Lock()
        watch_abort(lambda: self._answer_open("the server stopped before this request finished "
                                              "(drain time over)"), name)

    def submit(self, requests: Sequence, handle: Callable) -> None:
        """`handle(request, answer) -> list of output tensors` for each request, in the pool;
        its result (or its error) becomes the request's final response. While the server
        drains, new requests are answered UNAVAILABLE at once."""
        refuse = draining()
        for request in requests:
            answer = Answer(request, self.metrics)
            self.metrics.accepted()
            if refuse:
                answer.final(error=Unavailable("the server is shutting down; send the request "
                                               "to another replica or retry later"))
                continue
            with self._lock:
                self._open.add(answer)
            self._work.put((answer, handle))

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            self._answer(*item)
            del item  # an idle worker must not keep its last request alive: Triton unloads a
            # model only once every request object of it is released

    def _answer(self, answer: Answer, handle: Callable) -> None:
        try:
            answer.final(outputs=handle(answer.request, answer))
        except Exception as exc:  # noqa: BLE001 - every failure becomes this request's answer
            if not (isinstance(exc, EXPECTED_OUTCOMES) or answer.final_sent):
                stub.log_internal(exc)
            answer.final(error=exc)
        finally:
            with self._lock:
                self._open.discard(answer)

    def _answer_open(self, why: str) -> None:
        """Every request still open is answered UNAVAILABLE now; the workers still waiting on
        other models are not waited for (their late answers are dropped)."""
        with self._lock:
            still_open, self._open = list(self._open), set()
        for answer in still_open:
            answer.final(error=Unavailable(why))

    def shutdown(self) -> None:
        """At unload."""
        self._answer_open("the server shut down before this request finished")
        for _ in self._workers:
            self._work.put(None)
