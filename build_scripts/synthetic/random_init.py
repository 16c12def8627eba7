"""Per-tensor seeded random initialisation.

Every tensor draws from its own generator, seeded from (seed, tensor name), so the values do
not depend on module construction order or on a library's default initialisers.
"""
from __future__ import annotations

import hashlib
import math

import torch


def generator_for(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{int(seed)}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def normal(seed: int, name: str, shape, std: float, mean: float = 0.0) -> torch.Tensor:
    out = torch.empty(tuple(shape), dtype=torch.float32)
    return out.normal_(mean, std, generator=generator_for(seed, name))


def init_parameter(seed: int, name: str, shape, is_norm: bool) -> torch.Tensor:
    """Values for one parameter by its role: matrices and kernels ~ N(0, 1/fan_in), norms near 1,
    biases small. Scales keep activations of deep residual stacks in a sensible range."""
    shape = tuple(shape)
    if is_norm:
        if name.endswith("weight"):
            return normal(seed, name, shape, 0.1, 1.0)
        return normal(seed, name, shape, 0.05)
    if len(shape) == 1:  # bias
        return normal(seed, name, shape, 0.02)
    fan_in = math.prod(shape[1:])
    return normal(seed, name, shape, 1.0 / math.sqrt(fan_in))
