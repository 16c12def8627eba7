"""The Triton side of the Step1 LLM.

`llm_stream` (decoupled) holds the weights and one BatchedGenerator: `execute` only parses and
submits, the generator thread answers through each request's response sender: with
stream=true the new ids as they become final and then an empty final response, with
stream=false all ids in one final response. `llm` (HTTP / unary gRPC) forwards each request to
`llm_stream` by BLS from a worker thread and answers with all ids.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from . import stub, triton_io
from .engine_client import EngineClient
from ..errors import EXPECTED_OUTCOMES, InvalidInput, Unavailable, outcome
from ..llm import cpu_runtime
from ..llm.generator import BatchedGenerator
from ..llm.sampling import SamplingParams, request_max_length
from ..llm.static_decode import new_static_decoder
from ..llm.step1_model import load_step1
from ..settings import LLM, LLM_ERROR_OUTPUT, EditxSettings
from .model_config import load_editx_settings
from .metrics import ModelMetrics
from .shutdown import watch_abort
from .threaded_responder import ThreadedResponder

GENERATION_INPUTS = (("max_length", np.int32), ("max_new_tokens", np.int32),
                     ("temperature", np.float32), ("top_k", np.int32), ("seed", np.int64),
                     ("greedy", np.bool_))


def _optional_scalar(request, name: str, dtype):
    values = triton_io.read_utterance(request, name, dtype, optional=True)
    if values is None:
        return None
    if values.size != 1:
        raise InvalidInput(name, f"holds {values.size} values", "exactly one value")
    return values[0].item()


def read_sampling(request, settings: EditxSettings, prompt_length: int) -> SamplingParams:
    given = {name: _optional_scalar(request, name, dtype) for name, dtype in GENERATION_INPUTS}
    max_length = request_max_length(None if given["max_length"] is None else int(given["max_length"]),
                                    prompt_length, settings.max_length)
    if given["max_new_tokens"] is not None:
        if int(given["max_new_tokens"]) < 1:
            raise InvalidInput("max_new_tokens", f"is {given['max_new_tokens']}", "an integer >= 1")
        max_length = min(max_length, prompt_length + int(given["max_new_tokens"]))
    return SamplingParams(
        temperature=LLM.temperature if given["temperature"] is None else float(given["temperature"]),
        top_k=LLM.top_k if given["top_k"] is None else int(given["top_k"]),
        greedy=bool(given["greedy"]) if given["greedy"] is not None else False,
        seed=None if given["seed"] is None else int(given["seed"]),
        max_length=max_length)


def _ids_tensor(ids) -> object:
    return triton_io.tensor("output_ids", np.asarray(ids, dtype=np.int32))


class _Stream:
    """One llm_stream request's sender: sends from the generator thread and the execute thread
    under the IPC lock, exactly one final response, and no cancellation probe after it."""

    def __init__(self, request, metrics: ModelMetrics):
        self.metrics = metrics
        self.started = time.perf_counter()
        self.final_sent = False
        with stub.STUB_IPC_LOCK:
            self.sender = request.get_response_sender()
            self.wants_error_output = LLM_ERROR_OUTPUT in request.requested_output_names()

    def send(self, response=None, final: bool = False) -> None:
        pb = stub.pb()
        with stub.STUB_IPC_LOCK:
            if self.final_sent:
                return
            self.final_sent = final
            self.sender.send(response, flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0)

    def is_cancelled(self) -> bool:
        with stub.STUB_IPC_LOCK:
            return not self.final_sent and bool(self.sender.is_cancelled())

    def fail(self, error: BaseException) -> None:
        """The error as its own response, then the final one, which carries the message as the
        `error` output when the caller asked for it. Triton 2.51 loses a BLS stream's error
        responses that follow streamed ids, and never ends one whose final response is an
        error: a BLS caller (EngineClient.stream) reads the `error` output instead."""
        if not isinstance(error, EXPECTED_OUTCOMES):
            stub.log_internal(error)
        self.send(triton_io.error_response(error))
        final = None
        if self.wants_error_output:
            final = stub.pb().InferenceResponse(output_tensors=[
                triton_io.bytes_tensor(LLM_ERROR_OUTPUT, triton_io.error_message(error))])
        self.metrics.answered(outcome(error), time.perf_counter() - self.started)
        try:
            self.send(final, final=True)
        finally:
            self.metrics.delivered()


def _cancel_key(request) -> str | None:
    """The request id named by the `cancel` input, None when the request has none."""
    if stub.pb().get_input_tensor_by_name(request, "cancel") is None:
        return None
    key = triton_io.read_text(request, "cancel")
    if not key:
        raise InvalidInput("cancel", "is empty", "the request id of a generation to stop")
    return key


class LlmStreamModel:
    """model_repository/llm_stream."""

    def initialize(self, args):
        self.settings = settings = load_editx_settings(args)
        settings.apply_threads()
        if torch.device(settings.device).type == "cpu":  # decode is memory-bound: every core
            torch.set_num_threads(settings.llm_num_threads or cpu_runtime.cpu_count())
        dtype = getattr(torch, settings.llm_dtype)
        model = load_step1(settings.llm_dir, device=settings.device, dtype=dtype,
                           pack=settings.llm_pack_weights, pad_rows=settings.llm_pad_rows)
        static = None
        if settings.llm_cuda_graphs and model.device.type == "cuda":
            static = new_static_decoder(model, settings.max_active_sequences, settings.max_length)
        packing = f"oneDNN-packed (rows padded to {settings.llm_pad_rows}), " if model.packed else ""
        stub.log_info(f"llm_stream: Step1 {settings.llm_dtype} on {settings.device}, {packing}"
                      f"{'CUDA graphs, ' if static else ''}{torch.get_num_threads()} threads, "
                      f"OpenMP {cpu_runtime.openmp_runtime()}")
        self.metrics = ModelMetrics.in_stub(args["model_name"])
        self.generator = BatchedGenerator(model, max_active=settings.max_active_sequences,
                                          prefill_budget=settings.llm_prefill_budget,
                                          static_decode=static)
        self.generator.generate([[LLM.bos_id, LLM.bot_id]], [SamplingParams(greedy=True, max_length=4)])
        self.generator.on_step = self._report_step
        self._reported: tuple[int, int] | None = None
        self._report_step(0, 0, 0)
        self.stopped = False
        self.generator.start()
        watch_abort(self._abort, args["model_name"])

    def _abort(self) -> None:
        """serve.py's drain time is over: every sequence ends UNAVAILABLE, new ones too."""
        self.stopped = True
        self.generator.stop()
        self._report_step(0, 0, 0)

    def _report_step(self, active: int, pending: int, generated: int) -> None:
        """After each decode step: the gauges only when they change (each is a call into the
        server, on the generation hot path)."""
        if (active, pending) != self._reported:
            self._reported = (active, pending)
            self.metrics.set("step_audio_llm_sequences", active, state="active")
            self.metrics.set("step_audio_llm_sequences", pending, state="pending")
        self.metrics.add("step_audio_llm_generated_ids_total", generated)

    def _submit(self, request) -> None:
        pb = stub.pb()
        out = _Stream(request, self.metrics)
        accepted = False
        try:
            key = _cancel_key(request)
            if key is not None:  # a stop for another request (EngineClient.stream), not a generation
                self.generator.cancel(key)
                out.send(final=True)
                return
            self.metrics.accepted()
            accepted = True
            if self.stopped:
                raise Unavailable("the server is shutting down; the LLM has stopped")
            prompt = triton_io.read_utterance(request, "input_ids", np.int64)
            params = read_sampling(request, self.settings, prompt.size)
            stream = _optional_scalar(request, "stream", np.bool_)
            stream = True if stream is None else bool(stream)

            def on_token(ids):
                out.send(pb.InferenceResponse(output_tensors=[_ids_tensor(ids)]))

            def on_done(ids, error):
                if error is not None:
                    out.fail(error)
                    return
                self.metrics.answered("success", time.perf_counter() - out.started)
                try:
                    out.send(None if stream else pb.InferenceResponse(output_tensors=[_ids_tensor(ids)]),
                             final=True)
                finally:
                    self.metrics.delivered()

            self.generator.submit(prompt.tolist(), params, on_token if stream else None, on_done,
                                  cancelled=out.is_cancelled, key=request.request_id() or None)
        except Exception as exc:  # noqa: BLE001 - bad input or a stopped generator: this request only
            if not accepted:
                self.metrics.accepted()  # fail() counts it answered
            out.fail(exc)

    def execute(self, requests):
        for request in requests:
            self._submit(request)
        return None

    def finalize(self):
        self.generator.stop()


class LlmModel:
    """model_repository/llm: all ids in one response, for HTTP and unary gRPC."""

    def initialize(self, args):
        self.settings = load_editx_settings(args)
        self.engine = EngineClient("llm_stream")
        self.responder = ThreadedResponder(max_workers=max(4, 2 * self.settings.max_active_sequences),
                                           name="llm", metrics=ModelMetrics.in_stub(args["model_name"]))

    def _handle(self, request, answer):
        # streamed from llm_stream, so a cancelled request is noticed between ids
        inputs = {"input_ids": triton_io.read_utterance(request, "input_ids", np.int32)[None],
                  "stream": np.array([[True]])}
        for name, dtype in GENERATION_INPUTS:
            values = triton_io.read_utterance(request, name, dtype, optional=True)
            if values is not None:
                inputs[name] = values[None]
        responses = list(self.engine.stream(inputs, ["output_ids"], cancelled=answer.is_cancelled,
                                            error_output=LLM_ERROR_OUTPUT))
        ids = np.concatenate([r["output_ids"][0] for r in responses]) if responses else np.zeros(0, np.int32)
        return [_ids_tensor(ids)]

    def execute(self, requests):
        self.responder.submit(requests, self._handle)
        return None

    def finalize(self):
        self.responder.shutdown()
