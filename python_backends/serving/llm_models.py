"""The Triton side of the Step1 LLM.

`llm_stream` (decoupled) holds the weights and one BatchedGenerator: `execute` only parses and
submits, the generator thread answers through each request's response sender: with
stream=true the new ids as they become final and then an empty final response, with
stream=false all ids in one final response. `llm` (HTTP / unary gRPC) forwards each request to
`llm_stream` by BLS from a worker thread and answers with all ids.
"""
from __future__ import annotations

import numpy as np
import torch

from . import triton_io
from . import stub
from .engine_client import EngineClient
from ..errors import InvalidInput
from ..llm.generator import BatchedGenerator
from ..llm.sampling import SamplingParams
from ..llm.step1_model import load_step1
from ..settings import LLM, EditxSettings
from .model_config import load_editx_settings
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
    max_length = settings.max_length if given["max_length"] is None else int(given["max_length"])
    if not 2 <= max_length <= settings.max_length:
        raise InvalidInput("max_length", f"is {max_length}",
                           f"an integer from 2 to {settings.max_length} (prompt + generated ids)")
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


class LlmStreamModel:
    """model_repository/llm_stream."""

    def initialize(self, args):
        self.settings = load_editx_settings(args)
        self.settings.apply_threads()
        dtype = getattr(torch, self.settings.dtype)
        model = load_step1(self.settings.llm_dir, device=self.settings.device, dtype=dtype)
        self.generator = BatchedGenerator(model, max_active=self.settings.max_active_sequences)
        self.generator.generate([[LLM.bos_id, LLM.bot_id]], [SamplingParams(greedy=True, max_length=4)])
        self.generator.start()

    def _submit(self, request) -> None:
        pb = stub.pb()
        with stub.STUB_IPC_LOCK:
            sender = request.get_response_sender()
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            prompt = triton_io.read_utterance(request, "input_ids", np.int64)
            params = read_sampling(request, self.settings, prompt.size)
            stream = _optional_scalar(request, "stream", np.bool_)
            stream = True if stream is None else bool(stream)

            def send(response=None, flags=0):
                with stub.STUB_IPC_LOCK:  # the generator thread sends too
                    sender.send(response, flags=flags)

            def on_token(ids):
                send(pb.InferenceResponse(output_tensors=[_ids_tensor(ids)]))

            def on_done(ids, error):
                if error is not None:
                    if not isinstance(error, InvalidInput):
                        stub.log_internal(error)
                    send(triton_io.error_response(error), final)
                elif stream:
                    send(flags=final)
                else:
                    send(pb.InferenceResponse(output_tensors=[_ids_tensor(ids)]), final)

            self.generator.submit(prompt.tolist(), params, on_token if stream else None, on_done,
                                  cancelled=lambda: stub.is_cancelled(sender))
        except Exception as exc:  # noqa: BLE001 - bad input or a stopped generator: this request only
            if not isinstance(exc, InvalidInput):
                stub.log_internal(exc)
            with stub.STUB_IPC_LOCK:
                sender.send(triton_io.error_response(exc), flags=final)

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
                                           name="llm")

    def _handle(self, request, sender):
        # streamed from llm_stream, so a cancelled request is noticed between ids
        inputs = {"input_ids": triton_io.read_utterance(request, "input_ids", np.int32)[None],
                  "stream": np.array([[True]])}
        for name, dtype in GENERATION_INPUTS:
            values = triton_io.read_utterance(request, name, dtype, optional=True)
            if values is not None:
                inputs[name] = values[None]
        responses = list(self.engine.stream(inputs, ["output_ids"],
                                            cancelled=lambda: stub.is_cancelled(request)))
        ids = np.concatenate([r["output_ids"][0] for r in responses]) if responses else np.zeros(0, np.int32)
        return [_ids_tensor(ids)]

    def execute(self, requests):
        self.responder.submit(requests, self._handle)
        return None

    def finalize(self):
        self.responder.shutdown()
