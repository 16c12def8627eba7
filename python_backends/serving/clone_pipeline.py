"""The `clone` / `clone_stream` entry points: one request → speech in the prompt's voice.

Stages, each a Triton model called by BLS (python_backends/serving/engine_client.py):

    prompt_encoder (ensemble: speaker_embedding ∥ prompt_features → audio_tokenizer)
        skipped when the voice is in the PromptCache
    prompt_builder   prompt text + target text + audio tokens → LLM ids (EditX clone template)
    llm_stream       Step1 generation in the shared continuous batch (decoupled)
    token2wav        flow + HiFT → 24 kHz waveform

BLS rather than an ensemble because the cache skips a stage conditionally and the LLM is a
decoupled model; the straight data flow (prompt_encoder) is an ensemble.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Callable

import numpy as np

from . import triton_io
from .engine_client import EngineClient
from ..errors import InvalidInput, RequestCancelled
from .triton_io import read_text
from .prompt_cache import PromptCache, PromptFeatures, prompt_key
from ..settings import DECODER, LLM_ERROR_OUTPUT, EditxSettings
from ..tokenizer.preprocess import validate

LOG = logging.getLogger("clone")


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

    def generate(self, req: CloneRequest, input_ids: np.ndarray,
                 cancelled: Callable[[], bool] | None = None) -> np.ndarray:
        # streamed, so a cancelled clone stops the LLM between ids
        inputs = {"input_ids": _batched(input_ids.astype(np.int32)),
                  "seed": _batched(np.int64(req.seed)), "stream": _batched(np.bool_(True))}
        inputs.update({k: _batched(v[:1]) for k, v in req.generation.items()})
        chunks = [r["output_ids"][0] for r in self.models["llm_stream"].stream(
            inputs, ["output_ids"], cancelled, error_output=LLM_ERROR_OUTPUT)]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int32)

    def decode(self, req: CloneRequest, generated: np.ndarray, features: PromptFeatures) -> np.ndarray:
        if generated.size == 0:
            raise InvalidInput("target_text", "made the LLM stop before any audio token",
                               "a text the voice can speak")
        out = self.models["token2wav"].infer({
            "target_ids": _batched(generated.astype(np.int32)),
            "prompt_ids": _batched(features.merged_ids.astype(np.int32)),
            "prompt_mel": _batched(features.prompt_mel.astype(np.float32)),
            "speaker_embedding": _batched(features.speaker_embedding.astype(np.float32)),
            "seed": _batched(np.int64(req.seed))}, ["waveform"])
        return out["waveform"][0]

    def clone(self, req: CloneRequest, cancelled: Callable[[], bool] = lambda: False
              ) -> tuple[np.ndarray, dict]:
        """(24 kHz float32 waveform, {stage: seconds, "prompt_cached": bool}). `cancelled()` is
        checked between stages and during generation."""

        def check(stage: str) -> None:
            if cancelled():
                raise RequestCancelled(f"clone cancelled before {stage}")

        times: dict = {}

        def record(stage: str, value) -> None:
            times[stage] = value
            self.on_stage(stage, value)

        t = time.perf_counter()
        features, hit = self.prompt_features(req)
        record("prompt_cached", hit)
        record("prompt_encoder", time.perf_counter() - t)
        check("prompt_builder")
        t = time.perf_counter()
        input_ids = self.llm_ids(req, features)
        record("prompt_builder", time.perf_counter() - t)
        check("llm_stream")
        t = time.perf_counter()
        generated = self.generate(req, input_ids, cancelled)
        record("llm", time.perf_counter() - t)
        check("token2wav")
        t = time.perf_counter()
        wave = self.decode(req, generated, features)
        record("token2wav", time.perf_counter() - t)
        return wave, times


def output_tensors(wave: np.ndarray, timing: dict) -> list:
    return [triton_io.tensor("waveform", wave.astype(np.float32)),
            triton_io.tensor("sample_rate", np.array([DECODER.output_sample_rate], np.int32)),
            triton_io.bytes_tensor("timing", json.dumps(timing))]
