"""The whole fast tokenizer in one process (what the Triton ensemble wires model by model);
used by benchmarks and tests as the in-process fast path."""
from __future__ import annotations

import dataclasses

import numpy as np

from .preprocess import preprocess
from ..settings import TokenizerSettings
from .token_merge import merge_tokens
from .vq02 import Vq02Tokenizer
from .vq06 import Vq06Tokenizer


@dataclasses.dataclass
class AudioTokens:
    vq02: np.ndarray
    vq06: np.ndarray
    merged_ids: np.ndarray
    token_str: str


class FastTokenizer:
    def __init__(self, settings: TokenizerSettings):
        settings.apply_threads()
        self.settings = settings
        self.vq02 = Vq02Tokenizer.from_settings(settings)
        self.vq06 = Vq06Tokenizer.from_settings(settings)

    def __call__(self, requests: list[tuple[np.ndarray, int]]) -> list[AudioTokens]:
        audios = [preprocess(w, sr, self.settings) for w, sr in requests]
        out = []
        for a, b in zip(self.vq02(audios), self.vq06(audios)):
            out.append(AudioTokens(a, b, *merge_tokens(a, b)))
        return out
