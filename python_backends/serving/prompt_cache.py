"""What a clone needs from a prompt recording, kept per voice so cloning it again skips the
tokenizer, the prompt mel and CAM++.

Keyed by the sha256 of the raw prompt samples, rate and channel count (the transcript is not
part of it: it only enters the LLM prompt). LRU with a fixed number of entries; concurrent
requests for the same new voice compute it once (the others wait). Hits and misses are counted
for the server log and the `clone_prompt_cache_*` metrics.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import threading
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class PromptFeatures:
    merged_ids: np.ndarray  # int32: the tokenizer's interleaved ids (65536-based)
    token_str: str  # the same as <audio_N> text for the LLM prompt
    prompt_mel: np.ndarray  # float32 [frames, 80] at 50 Hz
    speaker_embedding: np.ndarray  # float32 [192]


def prompt_key(waveform: np.ndarray, sample_rate: int, channels: int) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(waveform, dtype=np.float32).tobytes())
    h.update(f"|{int(sample_rate)}|{int(channels)}".encode())
    return h.hexdigest()


class PromptCache:
    def __init__(self, entries: int):
        self.entries = entries
        self.hits = 0
        self.misses = 0
        self._items: collections.OrderedDict[str, PromptFeatures] = collections.OrderedDict()
        self._pending: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def get_or_compute(self, key: str, compute: Callable[[], PromptFeatures]
                       ) -> tuple[PromptFeatures, bool]:
        """(features, hit). A failing `compute` caches nothing and raises to its caller."""
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return self._items[key], True
                pending = self._pending.get(key)
                if pending is None:
                    self._pending[key] = threading.Event()
                    self.misses += 1
                    break
            pending.wait()
        try:
            features = compute()
            with self._lock:
                if self.entries > 0:
                    self._items[key] = features
                    while len(self._items) > self.entries:
                        self._items.popitem(last=False)
            return features, False
        finally:
            with self._lock:
                self._pending.pop(key).set()
