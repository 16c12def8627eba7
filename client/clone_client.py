"""Client of the `clone` model (HTTP or gRPC) and of `clone_stream` (gRPC streaming).

    with CloneClient("localhost:8001") as client:
        wave, rate = client.clone(prompt_waveform, prompt_rate, "prompt transcript", "text to say",
                                  seed=7)                      # float32 [S], 24000
        wave, rate = client.clone(..., stream=True)            # chunks gathered; first_chunk_s,
                                                               # chunk_seconds set
        client.stage_times()                                   # per model, Triton statistics

Bad input raises `TokenizerError` with the server's message (which names the input and the rule).
"""
from __future__ import annotations

import json
import queue
import time

import numpy as np

from .tokenizer_client import interleave
from .triton_base import TritonModelClient, _triton_dtype, as_client_error

MODEL = "clone"
STREAM_MODEL = "clone_stream"
STAGES = ("speaker_embedding", "prompt_features", "preprocess", "vq02", "vq06", "token_merge",
          "prompt_builder", "llm_stream", "token2wav", "clone", "clone_stream")


class CloneClient(TritonModelClient):
    stages = STAGES

    def __init__(self, url: str | None = None, protocol: str = "grpc", timeout_s: float | None = None):
        super().__init__(url, protocol, MODEL, timeout_s)
        self.first_chunk_s: float | None = None  # last stream: seconds to its first audio
        self.chunk_seconds: list[float] = []  # last stream: each audio chunk's arrival, from the start
        self.last_timing: dict = {}  # the server's seconds per stage of the last clone

    def _input(self, name: str, array: np.ndarray, dtype: str | None = None):
        tensor = self._tc.InferInput(name, list(array.shape), dtype or _triton_dtype(array.dtype))
        if self.protocol == "http":
            tensor.set_data_from_numpy(array, binary_data=True)
        else:
            tensor.set_data_from_numpy(array)
        return tensor

    def inputs(self, waveform, sample_rate: int, prompt_text: str, text: str, channels: int = 1,
               seed: int | None = None, greedy: bool | None = None, temperature: float | None = None,
               top_k: int | None = None, max_length: int | None = None,
               max_new_tokens: int | None = None) -> list:
        audio, channels = interleave(waveform, channels)
        tensors = [
            self._input("waveform", audio.reshape(1, -1)),
            self._input("sample_rate", np.array([[sample_rate]], np.int32)),
            self._input("channels", np.array([[channels]], np.int32)),
            self._input("prompt_text", np.array([[prompt_text.encode("utf-8")]], np.object_), "BYTES"),
            self._input("target_text", np.array([[text.encode("utf-8")]], np.object_), "BYTES"),
        ]
        optional = (("seed", seed, np.int64), ("greedy", greedy, np.bool_),
                    ("temperature", temperature, np.float32), ("top_k", top_k, np.int32),
                    ("max_length", max_length, np.int32), ("max_new_tokens", max_new_tokens, np.int32))
        tensors += [self._input(name, np.array([[value]], dtype)) for name, value, dtype in optional
                    if value is not None]
        return tensors

    def clone(self, waveform, sample_rate: int, prompt_text: str, text: str, stream: bool = False,
              **options) -> tuple[np.ndarray, int]:
        """→ (float32 waveform, its sample rate). `options`: channels, seed, greedy, temperature,
        top_k, max_length, max_new_tokens."""
        inputs = self.inputs(waveform, int(sample_rate), prompt_text, text, **options)
        if stream:
            return self._clone_stream(inputs)
        outputs = [self._tc.InferRequestedOutput(n, **({"binary_data": True} if self.protocol == "http" else {}))
                   for n in ("waveform", "sample_rate", "timing")]
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" and self.timeout_s else {}
        try:
            result = self._client.infer(MODEL, inputs, outputs=outputs, **kwargs)
        except Exception as exc:  # tritonclient's InferenceServerException
            raise as_client_error(exc) from None
        self.last_timing = _timing(result)
        return result.as_numpy("waveform").reshape(-1), int(result.as_numpy("sample_rate").reshape(-1)[0])

    def _clone_stream(self, inputs: list) -> tuple[np.ndarray, int]:
        if self.protocol != "grpc":
            raise ValueError("streaming needs gRPC (clone_stream is a decoupled model)")
        responses: queue.Queue = queue.Queue()
        start = time.perf_counter()
        self._client.start_stream(callback=lambda result, error: responses.put((result, error)),
                                  stream_timeout=self.timeout_s)
        chunks, rate = [], 0
        self.first_chunk_s, self.chunk_seconds = None, []
        try:
            self._client.async_stream_infer(STREAM_MODEL, inputs, enable_empty_final_response=True)
            while True:
                result, error = responses.get(timeout=self.timeout_s)
                if error is not None:
                    raise as_client_error(error)
                wave = result.as_numpy("waveform")
                if wave is not None and wave.size:
                    self.chunk_seconds.append(time.perf_counter() - start)
                    self.first_chunk_s = self.chunk_seconds[0]
                    chunks.append(wave.reshape(-1))
                    rate = int(result.as_numpy("sample_rate").reshape(-1)[0])
                    self.last_timing = _timing(result)
                final = result.get_response().parameters.get("triton_final_response")
                if final is not None and final.bool_param:
                    break
        finally:
            self._client.stop_stream()
        return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), rate


def _timing(result) -> dict:
    raw = result.as_numpy("timing")
    if raw is None:
        return {}
    value = raw.reshape(-1)[0]
    return json.loads(value.decode("utf-8") if isinstance(value, bytes) else value)
