"""The original `wav2token` chain end to end, one request at a time."""
from __future__ import annotations

import numpy as np

from ..pipeline import AudioTokens
from ...settings import TokenizerSettings
from .merge import reference_merge
from .preprocess import reference_preprocess
from .vq02 import ReferenceVq02
from .vq06 import ReferenceVq06


class ReferenceTokenizer:
    def __init__(self, settings: TokenizerSettings):
        self.vq02 = ReferenceVq02(settings.paraformer_dir, settings.centroids_path, settings.dither)
        self.vq06 = ReferenceVq06(settings.speech_tokenizer_path)

    def preprocess(self, waveform: np.ndarray, sample_rate: int, channels: int = 1) -> np.ndarray:
        return reference_preprocess(waveform, sample_rate, channels)

    def __call__(self, waveform: np.ndarray, sample_rate: int, channels: int = 1) -> AudioTokens:
        audio = self.preprocess(waveform, sample_rate, channels)
        vq02, vq06 = self.vq02(audio), self.vq06(audio)
        ids, token_str = reference_merge(vq02.tolist(), vq06.tolist())
        return AudioTokens(vq02, vq06, np.asarray(ids, np.int32), token_str)
