"""Answering requests from worker threads, so one model instance serves many at once.

Every call into the stub's IPC holds stub.STUB_IPC_LOCK (Triton 2.51 crashes otherwise).

The `llm` and `clone` models spend most of a request waiting on other models (BLS) whose
own schedulers batch across requests; answering in `execute` one request at a time would
serialise them and leave those batches empty. Instead `execute` hands each request to a
thread pool and returns None; the worker answers through the request's response sender with
the FINAL flag (Triton >= 24.07 allows this for non-decoupled models too). A decoupled model
can send partial responses first with `send_partial`.
"""
from __future__ import annotations

import concurrent.futures
from typing import Callable, Sequence

from . import triton_io
from . import stub
from ..errors import InvalidInput


class ThreadedResponder:
    def __init__(self, max_workers: int, name: str):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers,
                                                           thread_name_prefix=name)

    def submit(self, requests: Sequence, handle: Callable) -> None:
        """`handle(request, sender) -> list of output tensors` for each request, in the pool;
        its result (or its error) becomes the request's final response."""
        for request in requests:
            self._pool.submit(self._answer, request, handle)

    @staticmethod
    def _answer(request, handle: Callable) -> None:
        pb = stub.pb()
        with stub.STUB_IPC_LOCK:
            sender = request.get_response_sender()
        try:
            outputs = handle(request, sender)
            response = pb.InferenceResponse(output_tensors=outputs)
        except Exception as exc:  # noqa: BLE001 - every failure becomes this request's answer
            if not isinstance(exc, InvalidInput):
                stub.log_internal(exc)
            response = triton_io.error_response(exc)
        with stub.STUB_IPC_LOCK:
            sender.send(response, flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    @staticmethod
    def send_partial(sender, outputs: list) -> None:
        """A non-final response (decoupled models only)."""
        response = stub.pb().InferenceResponse(output_tensors=outputs)
        with stub.STUB_IPC_LOCK:
            sender.send(response)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
