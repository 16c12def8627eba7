"""The Triton side of the decoder models: speaker_embedding, prompt_features, token2wav.

Each batches the requests of one `execute` call (python_backends.serving.triton_io.respond_batched);
a request with bad input gets its own error, the others run.
"""
from __future__ import annotations

import numpy as np

from . import stub, triton_io
from ..errors import InvalidInput
from ..decoder.prompt_audio import prompt_audio
from ..settings import DECODER, LLM, EditxSettings
from .model_config import load_editx_settings


def read_prompt(request, settings: EditxSettings) -> tuple[np.ndarray, int]:
    """(mono peak-capped prompt, its rate) from waveform / sample_rate / channels."""
    io = triton_io
    rate = io.read_scalar(request, "sample_rate")
    audio = prompt_audio(io.read_utterance(request, "waveform", np.float32), rate,
                         io.read_scalar(request, "channels", default=1), settings)
    return audio, rate


class SpeakerEmbeddingModel:
    def initialize(self, args):
        from ..decoder.speaker_embedding import SpeakerEmbedder

        self.settings = load_editx_settings(args)
        self.embedder = SpeakerEmbedder(self.settings.cosyvoice_dir / "campplus.onnx",
                                        self.settings.num_threads)

    def execute(self, requests):
        return triton_io.respond_batched(
            requests, parse=lambda r: read_prompt(r, self.settings),
            run=lambda items: list(self.embedder.batch([a for a, _ in items], [r for _, r in items])),
            outputs=lambda e: [triton_io.tensor("speaker_embedding", e.astype(np.float32))])


class PromptFeaturesModel:
    def initialize(self, args):
        from ..decoder.prompt_mel import PromptMel

        self.settings = load_editx_settings(args)
        self.settings.apply_threads()
        self.mel = PromptMel(self.settings.device)

    def _run(self, items):
        mel, frames = self.mel.batch([a for a, _ in items], [r for _, r in items])
        mel = mel.cpu().numpy()
        return [(mel[i, :n], audio) for i, (n, (audio, _)) in enumerate(zip(frames, items))]

    def execute(self, requests):
        io = triton_io
        return io.respond_batched(
            requests, parse=lambda r: read_prompt(r, self.settings), run=self._run,
            outputs=lambda result: [io.tensor("prompt_mel", result[0]),
                                    io.tensor("prompt_audio", result[1]),
                                    io.tensor("prompt_channels", np.array([1], np.int32))])


def read_token2wav(request) -> dict:
    io = triton_io
    item = {
        "target_ids": io.read_utterance(request, "target_ids", np.int64),
        "prompt_ids": io.read_utterance(request, "prompt_ids", np.int64),
        "speaker_embedding": io.read_utterance(request, "speaker_embedding", np.float32),
        "seed": io.read_scalar(request, "seed"),
    }
    tensor = stub.pb().get_input_tensor_by_name(request, "prompt_mel")
    mel = tensor.as_numpy()
    if mel.ndim != 3 or mel.shape[0] != 1 or mel.shape[2] != DECODER.mel_bins:
        raise InvalidInput("prompt_mel", f"has shape {list(mel.shape)}",
                           f"[1, frames, {DECODER.mel_bins}]: one prompt mel per request")
    item["prompt_mel"] = np.ascontiguousarray(mel[0], dtype=np.float32)
    top = LLM.audio_token_offset + LLM.audio_tokens
    for name in ("target_ids", "prompt_ids"):
        if item[name].size == 0:
            raise InvalidInput(name, "is empty", "at least one token id")
        if item[name].max() >= top:
            raise InvalidInput(name, f"holds id {int(item[name].max())}, past the audio tokens",
                               f"<audio_N> ids {LLM.audio_token_offset}..{top - 1} (ids below "
                               f"{LLM.audio_token_offset} are read as code 0, as the original does)")
    if not np.isfinite(item["prompt_mel"]).all() or not np.isfinite(item["speaker_embedding"]).all():
        raise InvalidInput("prompt_mel", "or speaker_embedding contains NaN or Inf", "finite values")
    return item


class Token2WavModel:
    def initialize(self, args):
        from . import engine_client
        from ..decoder.token2wav import Token2Wav

        self.settings = load_editx_settings(args)
        self.settings.apply_threads()
        self.decoder = Token2Wav.from_settings(self.settings, engine_client.from_model_args(args))

    def execute(self, requests):
        return triton_io.respond_batched(
            requests, parse=read_token2wav, run=self.decoder.batch,
            outputs=lambda wave: [triton_io.tensor("waveform", wave)])
