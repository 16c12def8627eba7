"""The `clone` / `clone_stream` entry points: one request → speech in the prompt's voice.

Stages, each a Triton model called by BLS (python_backends/serving/engine_client.py):

    prompt_encoder (ensemble: speaker_embedding ∥ prompt_features → audio_tokenizer)
        skipped when the voice is in the PromptCache
    prompt_builder   prompt text + target text + audio tokens → LLM ids (EditX clone template)
    llm_stream       Step1 generation in the shared continuous batch (decoupled)
    token2wav        flow + HiFT → 24 kHz waveform

BLS rather than an ensemble because the cache skips a stage conditionally and the LLM is a
decoupled model; the straight data flow (prompt_encoder) is an ensemble.

`clone_stream` shares the first three stages; instead of token2wav it pushes llm_stream's ids,
as they come, into the streaming decoder (python_backends.decoder.stream_scheduler), which
sends each audio chunk as soon as its token chunk and look-ahead are there.
"""
from __future__ import annotations

import dataclasses
import json
import os
import queue
import threading
import time
from typing import Callable

import numpy as np

from . import triton_io
from .engine_client import EngineClient
from ..decoder.stream_scheduler import SchedulerStopped, StreamScheduler
from ..errors import InvalidInput, RequestCancelled, Unavailable
from .triton_io import read_text
from .prompt_cache import PromptCache, PromptFeatures, prompt_key
from ..settings import DECODER, LLM_ERROR_OUTPUT, EditxSettings
from ..tokenizer.preprocess import validate


@dataclasses.dataclass(frozen=True)
class CloneRequest:
    waveform: np.ndarray  # interleaved float32
    sample_rate: int
    channels: int
    prompt_text: str
    target_text: str
    seed: int
    generation: dict  # optional llm inputs the client sent: max_length, max_new_tokens, temperature, top_k, greedy


def read_clone_request(request, settings: EditxSettings) -> CloneRequest:
    """The request's inputs, the prompt recording checked (length, rate, finite samples) here,
    before any copy of it is sent on to another model."""
    io = triton_io
    generation = {}
    for name, dtype in (("max_length", np.int32), ("max_new_tokens", np.int32),
                        ("temperature", np.float32), ("top_k", np.int32), ("greedy", np.bool_)):
        value = io.read_utterance(request, name, dtype, optional=True)
        if value is not None:
            generation[name] = value
    if "max_new_tokens" in generation and int(generation["max_new_tokens"][0]) < 2:
        raise InvalidInput("max_new_tokens", f"is {int(generation['max_new_tokens'][0])}",
                           "an integer >= 2 for a clone (the last generated id is dropped, as "
                           "the original does)")
    seed = io.read_utterance(request, "seed", np.int64, optional=True)
    waveform = io.read_utterance(request, "waveform", np.float32)
    sample_rate = io.read_scalar(request, "sample_rate")
    channels = io.read_scalar(request, "channels", default=1)
    validate(waveform, sample_rate, channels, settings)
    return CloneRequest(
        waveform=waveform, sample_rate=sample_rate, channels=channels,
        prompt_text=read_text(request, "prompt_text"),
        target_text=read_text(request, "target_text"),
        seed=int(seed[0]) if seed is not None else int.from_bytes(os.urandom(7), "little"),
        generation=generation)


def _batched(value) -> np.ndarray:
    """One request's value with the batch dimension (1) in front, as the models expect."""
    array = np.asarray(value)
    return array[None] if array.ndim else array.reshape(1, 1)


def _text(value: str | bytes) -> np.ndarray:
    return np.array([[value.encode("utf-8") if isinstance(value, str) else value]], dtype=np.object_)


class ClonePipeline:
    def __init__(self, cache: PromptCache, client: Callable[[str], EngineClient] = EngineClient,
                 on_stage: Callable[[str, float | bool], None] = lambda stage, value: None):
        """`on_stage(stage, seconds)` as each stage ends, and ("prompt_cached", hit) once per
        prompt lookup (metrics)."""
        self.cache = cache
        self.on_stage = on_stage
        self.models = {name: client(name) for name in
                       ("prompt_encoder", "prompt_builder", "llm_stream", "token2wav")}

    def prompt_features(self, req: CloneRequest) -> tuple[PromptFeatures, bool]:
        def encode() -> PromptFeatures:
            out = self.models["prompt_encoder"].infer({
                "waveform": _batched(req.waveform), "sample_rate": _batched(np.int32(req.sample_rate)),
                "channels": _batched(np.int32(req.channels))},
                ["merged_ids", "token_str", "prompt_mel", "speaker_embedding"])
            return PromptFeatures(merged_ids=out["merged_ids"][0], token_str=out["token_str"][0, 0],
                                  prompt_mel=out["prompt_mel"][0],
                                  speaker_embedding=out["speaker_embedding"][0])

        return self.cache.get_or_compute(prompt_key(req.waveform, req.sample_rate, req.channels), encode)

    def llm_ids(self, req: CloneRequest, features: PromptFeatures) -> np.ndarray:
        out = self.models["prompt_builder"].infer({
            "prompt_text": _text(req.prompt_text), "target_text": _text(req.target_text),
            "token_str": _text(features.token_str),
            "waveform": _batched(req.waveform), "channels": _batched(np.int32(req.channels))},
            ["input_ids"])
        return out["input_ids"][0]

    def generated_ids(self, req: CloneRequest, input_ids: np.ndarray,
                      cancelled: Callable[[], bool] | None = None):
        """llm_stream's ids, chunk by chunk as they come (a cancelled clone stops the LLM)."""
        inputs = {"input_ids": _batched(input_ids.astype(np.int32)),
                  "seed": _batched(np.int64(req.seed)), "stream": _batched(np.bool_(True))}
        inputs.update({k: _batched(v[:1]) for k, v in req.generation.items()})
        for response in self.models["llm_stream"].stream(inputs, ["output_ids"], cancelled,
                                                         error_output=LLM_ERROR_OUTPUT):
            yield response["output_ids"][0]

    def generate(self, req: CloneRequest, input_ids: np.ndarray,
                 cancelled: Callable[[], bool] | None = None) -> np.ndarray:
        chunks = list(self.generated_ids(req, input_ids, cancelled))
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int32)

    def decode(self, req: CloneRequest, generated: np.ndarray, features: PromptFeatures) -> np.ndarray:
        if generated.size == 0:
            raise _no_audio()
        out = self.models["token2wav"].infer({
            "target_ids": _batched(generated.astype(np.int32)),
            "prompt_ids": _batched(features.merged_ids.astype(np.int32)),
            "prompt_mel": _batched(features.prompt_mel.astype(np.float32)),
            "speaker_embedding": _batched(features.speaker_embedding.astype(np.float32)),
            "seed": _batched(np.int64(req.seed))}, ["waveform"])
        return out["waveform"][0]

    def _prompt(self, req: CloneRequest, times: "_Times", check: Callable[[str], None]
                ) -> tuple[PromptFeatures, np.ndarray]:
        """The stages both entry points share → (prompt features, the LLM's input ids)."""
        t = time.perf_counter()
        features, hit = self.prompt_features(req)
        times.record("prompt_cached", hit)
        times.record("prompt_encoder", time.perf_counter() - t)
        check("prompt_builder")
        t = time.perf_counter()
        input_ids = self.llm_ids(req, features)
        times.record("prompt_builder", time.perf_counter() - t)
        check("llm_stream")
        return features, input_ids

    def clone(self, req: CloneRequest, cancelled: Callable[[], bool] = lambda: False
              ) -> tuple[np.ndarray, dict]:
        """(24 kHz float32 waveform, {stage: seconds, "prompt_cached": bool}). `cancelled()` is
        checked between stages and during generation."""
        times, check = _Times(self.on_stage), _checker(cancelled, "clone")
        features, input_ids = self._prompt(req, times, check)
        t = time.perf_counter()
        generated = self.generate(req, input_ids, cancelled)
        times.record("llm", time.perf_counter() - t)
        check("token2wav")
        t = time.perf_counter()
        wave = self.decode(req, generated, features)
        times.record("token2wav", time.perf_counter() - t)
        return wave, times.snapshot()

    def clone_stream(self, req: CloneRequest, decoder: StreamScheduler,
                     send: Callable[[np.ndarray, dict], None],
                     cancelled: Callable[[], bool] = lambda: False,
                     poll_s: float = 0.1) -> tuple[np.ndarray, dict]:
        """Streamed clone: `send(chunk, times)` for each audio chunk as the decoder makes it (from
        the decoder's thread) → (the last chunk, times). Times add `first_audio` (request start
        to the first chunk) and `token2wav`: the decoder's tail after the LLM's last id."""
        started = time.perf_counter()
        times, check = _Times(self.on_stage), _checker(cancelled, "clone_stream")
        features, input_ids = self._prompt(req, times, check)
        done: queue.Queue = queue.Queue()

        def on_audio(chunk: np.ndarray) -> None:
            if "first_audio" not in times:
                times.record("first_audio", time.perf_counter() - started)
            send(chunk, times.snapshot())

        handle = decoder.open(features.merged_ids, features.prompt_mel, features.speaker_embedding,
                              req.seed, on_audio, lambda last, error: done.put((last, error)))
        try:
            t, count = time.perf_counter(), 0
            for ids in self.generated_ids(req, input_ids, cancelled):
                handle.push(ids)
                count += ids.size
            times.record("llm", time.perf_counter() - t)
            if count == 0:
                raise _no_audio()
            handle.close()
            t = time.perf_counter()
            while True:
                try:
                    last, error = done.get(timeout=poll_s)
                    break
                except queue.Empty:
                    check("the end of decoding")
            if isinstance(error, SchedulerStopped):
                raise Unavailable(str(error))
            if error is not None:
                check("the end of decoding")  # a send that failed because the client left
                raise error
            times.record("token2wav", time.perf_counter() - t)
            if "first_audio" not in times:
                times.record("first_audio", time.perf_counter() - started)
            return last, times.snapshot()
        finally:
            handle.cancel()  # a no-op once the stream is finished


def _no_audio() -> InvalidInput:
    return InvalidInput("target_text", "made the LLM stop before any audio token",
                        "a text the voice can speak")


def _checker(cancelled: Callable[[], bool], model: str) -> Callable[[str], None]:
    def check(stage: str) -> None:
        if cancelled():
            raise RequestCancelled(f"{model} cancelled before {stage}")
    return check


class _Times:
    """One request's {stage: seconds, "prompt_cached": bool}, recorded from the request's thread
    and read from the decoder's (clone_stream), each value also reported to `on_stage`."""

    def __init__(self, on_stage: Callable[[str, float | bool], None]):
        self._values: dict = {}
        self._lock = threading.Lock()
        self._on_stage = on_stage

    def __contains__(self, stage: str) -> bool:
        with self._lock:
            return stage in self._values

    def record(self, stage: str, value) -> None:
        with self._lock:
            self._values[stage] = value
        self._on_stage(stage, value)

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._values)


def output_tensors(wave: np.ndarray, timing: dict) -> list:
    return [triton_io.tensor("waveform", wave.astype(np.float32)),
            triton_io.tensor("sample_rate", np.array([DECODER.output_sample_rate], np.int32)),
            triton_io.bytes_tensor("timing", json.dumps(timing))]
