"""Client of the `audio_tokenizer` ensemble over gRPC (default) or HTTP.

    client = AudioTokenizerClient("localhost:8001")
    tokens = client.tokenize(waveform, sample_rate)      # waveform: [N] or [N, channels]
    tokens["vq02_codes"], tokens["vq06_codes"], tokens["merged_ids"], tokens["token_str"]
    client.stage_times()    # per model: Triton statistics since the last call (or creation)

Bad input raises `TokenizerError`, whose text is the server's message, e.g.
"in ensemble 'audio_tokenizer', input 'sample_rate': got 4000 Hz; allowed: ...".
"""
from __future__ import annotations

import numpy as np

from .triton_base import TokenizerError, TritonModelClient, _triton_dtype, as_client_error

MODEL = "audio_tokenizer"
STAGES = ("preprocess", "vq02", "vq06", "token_merge", "audio_tokenizer")
OUTPUTS = ("vq02_codes", "vq06_codes", "merged_ids", "token_str")

__all__ = ["AudioTokenizerClient", "TokenizerError", "interleave"]


def interleave(waveform, channels: int = 1) -> tuple[np.ndarray, int]:
    """[N] samples (with `channels` interleaved) or [N, C] frames → (float32 [N·C], C)."""
    audio = np.asarray(waveform)
    if audio.ndim == 2:
        channels = audio.shape[1]
        audio = audio.reshape(-1)
    if audio.dtype.kind == "f":
        audio = audio.astype(np.float32, copy=False)
    return np.ascontiguousarray(audio), int(channels)


class AudioTokenizerClient(TritonModelClient):
    stages = STAGES

    def __init__(self, url: str | None = None, protocol: str = "grpc", model: str = MODEL,
                 timeout_s: float | None = None):
        super().__init__(url, protocol, model, timeout_s)

    # ----------------------------------------------------------------- inference
    def _inputs(self, waveform: np.ndarray, sample_rate: int, channels: int) -> list:
        tc = self._tc
        audio = tc.InferInput("waveform", [1, waveform.size], "FP32" if waveform.dtype == np.float32
                              else _triton_dtype(waveform.dtype))
        rate = tc.InferInput("sample_rate", [1, 1], "INT32")
        chans = tc.InferInput("channels", [1, 1], "INT32")
        # `channels` is always sent: Triton batches only requests carrying the same inputs
        values = ((audio, waveform.reshape(1, -1)), (rate, np.array([[sample_rate]], np.int32)),
                  (chans, np.array([[channels]], np.int32)))
        for tensor, array in values:
            if self.protocol == "http":
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                tensor.set_data_from_numpy(array)
        return [audio, rate, chans]

    def tokenize(self, waveform, sample_rate: int, channels: int = 1) -> dict:
        """→ {"vq02_codes", "vq06_codes", "merged_ids": int32 arrays, "token_str": str}."""
        audio, channels = interleave(waveform, channels)
        inputs = self._inputs(audio, int(sample_rate), channels)
        if self.protocol == "http":
            outputs = [self._tc.InferRequestedOutput(n, binary_data=True) for n in OUTPUTS]
        else:
            outputs = [self._tc.InferRequestedOutput(n) for n in OUTPUTS]
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" and self.timeout_s else {}
        try:
            result = self._client.infer(self.model, inputs, outputs=outputs, **kwargs)
        except Exception as exc:  # tritonclient's InferenceServerException
            raise as_client_error(exc) from None
        text = result.as_numpy("token_str").reshape(-1)[0]
        return {
            "vq02_codes": result.as_numpy("vq02_codes").reshape(-1),
            "vq06_codes": result.as_numpy("vq06_codes").reshape(-1),
            "merged_ids": result.as_numpy("merged_ids").reshape(-1),
            "token_str": text.decode("utf-8") if isinstance(text, bytes) else str(text),
        }

