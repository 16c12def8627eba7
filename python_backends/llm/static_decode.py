"""Decode steps with static shapes: the CUDA-graph path of the Step1 generator.

On a GPU a decode step is launch-bound (perf/RESULTS.md: ~770 kernel launches per step, the
GPU busy 165 of 910 ms), so the step is captured once per shape as a CUDA graph and replayed.
A graph replays fixed shapes and fixed memory, so:

- the batch is padded up to a bucket (`DecodeBuckets.batches`, default powers of two up to the
  generator's `max_active`); a padded row decodes id 0 at position 0 and writes its keys and
  values into a scratch slot (the cache's last slot, which no sequence owns), so it touches
  no sequence's cache; its logits are dropped;
- the key length is padded up to a bucket too (`key_lengths`: powers of two up to the cache
  capacity); keys past a row's own position are masked (-inf) as always;
- the KV cache is allocated once at its full capacity (`KVCache(fixed_capacity=...)`) and never
  moves; ids, positions and slots are copied into static input buffers before each replay.

Shapes beyond the buckets (more rows than the largest bucket, a sequence longer than the
cache) return None, and the generator runs that step eagerly. Steps with prefill chunks always
run eagerly. `capture=False` runs the very same static-shape step without a graph: that is how
the CPU tests check the buffers, the padding and the bucket logic, and how ids of the static
path are compared with the eager path's.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from .step1_model import KVCache, StepPlan, Step1Model

DEFAULT_SMALLEST_KEY_BUCKET = 256


def powers_of_two_up_to(limit: int, smallest: int = 1) -> tuple[int, ...]:
    """smallest, 2·smallest, 4·smallest, ... below `limit`, then `limit` itself."""
    out, value = [], smallest
    while value < limit:
        out.append(value)
        value *= 2
    return tuple(out) + (limit,)


@dataclasses.dataclass(frozen=True)
class DecodeBuckets:
    batches: tuple[int, ...]  # rows a graph decodes, ascending
    key_lengths: tuple[int, ...]  # keys a graph attends over, ascending

    @classmethod
    def for_generator(cls, max_active: int, capacity: int,
                      smallest_keys: int = DEFAULT_SMALLEST_KEY_BUCKET) -> "DecodeBuckets":
        return cls(powers_of_two_up_to(max_active),
                   powers_of_two_up_to(capacity, min(smallest_keys, capacity)))

    def __post_init__(self):
        for name in ("batches", "key_lengths"):
            values = getattr(self, name)
            if not values or list(values) != sorted(set(values)) or values[0] < 1:
                raise ValueError(f"{name} must be ascending positive integers, not {values}")

    def select(self, rows: int, key_len: int) -> tuple[int, int] | None:
        """The smallest (batch, key length) bucket holding `rows` rows over `key_len` keys, or
        None (the step runs eagerly)."""
        batch = next((b for b in self.batches if b >= rows), None)
        keys = next((k for k in self.key_lengths if k >= key_len), None)
        if rows < 1 or batch is None or keys is None:
            return None
        return batch, keys


class StaticDecoder:
    """Decode steps of `model` on `cache` in static shapes, captured as CUDA graphs when
    `capture` (one per bucket, at its first use), else run eagerly the same way (CPU tests)."""

    def __init__(self, model: Step1Model, cache: KVCache, buckets: DecodeBuckets,
                 capture: bool | None = None):
        if cache.fixed_capacity is None:
            raise ValueError("a static decoder needs a KVCache with fixed_capacity")
        if buckets.key_lengths[-1] > cache.capacity:
            raise ValueError(f"key bucket {buckets.key_lengths[-1]} exceeds the cache's "
                             f"capacity {cache.capacity}")
        if buckets.batches[-1] >= cache.slots:
            raise ValueError(f"batch bucket {buckets.batches[-1]} needs {buckets.batches[-1] + 1} "
                             f"cache slots (one scratch slot), the cache has {cache.slots}")
        self.model = model
        self.cache = cache
        self.buckets = buckets
        self.capture = model.device.type == "cuda" if capture is None else capture
        if self.capture and model.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA model")
        self.scratch_slot = cache.slots - 1
        rows, device = buckets.batches[-1], model.device
        self.ids = torch.zeros(rows, dtype=torch.long, device=device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=device)
        self.slots = torch.full((rows,), self.scratch_slot, dtype=torch.long, device=device)
        self._graphs: dict[tuple[int, int], tuple[object, torch.Tensor]] = {}
        self._pool = None
        self.replays = 0

    @property
    def captured(self) -> list[tuple[int, int]]:
        return sorted(self._graphs)

    def _fill(self, ids: Sequence[int], positions: Sequence[int], batch: int) -> None:
        n = len(ids)
        pad = batch - n
        host = torch.tensor([list(ids) + [0] * pad, list(positions) + [0] * pad,
                             list(range(n)) + [self.scratch_slot] * pad], dtype=torch.long)
        if self.ids.device.type == "cuda":
            host = host.pin_memory()
        self.ids[:batch].copy_(host[0], non_blocking=True)
        self.positions[:batch].copy_(host[1], non_blocking=True)
        self.slots[:batch].copy_(host[2], non_blocking=True)

    def _step(self, batch: int, keys: int) -> torch.Tensor:
        """The static-shape decode step over the first `batch` rows of the input buffers."""
        positions = self.positions[:batch]
        plan = StepPlan(decode_rows=batch, decode_key_len=keys,
                        decode_bias=self.model.attention_bias(positions[:, None], keys),
                        segments=[], slot_index=self.slots[:batch], position_index=positions,
                        logits_rows=None)
        return self.model.run(self.ids[:batch], self.cache, plan)

    def _graph(self, batch: int, keys: int):
        if (batch, keys) not in self._graphs:
            device = self.model.device
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):  # warm-up: kernel choice and workspaces, off-graph
                self._step(batch, keys)
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = self._step(batch, keys)
            self._pool = graph.pool()
            self._graphs[(batch, keys)] = (graph, out)
        return self._graphs[(batch, keys)]

    def decode(self, ids: Sequence[int], positions: Sequence[int]) -> torch.Tensor | None:
        """Float logits [len(ids), vocab] of one decode step of the sequences in slots
        0..len(ids)-1 (newest id, cached length), or None when no bucket holds the shape."""
        bucket = self.buckets.select(len(ids), max(positions, default=0) + 1)
        if bucket is None:
            return None
        batch, keys = bucket
        self._fill(ids, positions, batch)
        if not self.capture:
            return self._step(batch, keys)[: len(ids)]
        graph, out = self._graph(batch, keys)
        graph.replay()
        self.replays += 1
        return out[: len(ids)]


def new_static_decoder(model: Step1Model, max_active: int, capacity: int,
                       capture: bool | None = None) -> StaticDecoder:
    """A StaticDecoder over a new fixed cache of max_active + 1 slots (one scratch) and
    `capacity` positions, with the default buckets; pass it as BatchedGenerator's
    `static_decode`."""
    cache = model.new_cache(max_active + 1, fixed_capacity=capacity)
    return StaticDecoder(model, cache, DecodeBuckets.for_generator(max_active, capacity), capture)
