"""k-means codebooks fitted to features of synthetic speech (Lloyd's algorithm, seeded)."""
from __future__ import annotations

import numpy as np
import torch


def _nearest(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    dist = torch.addmm((c * c).sum(1)[None, :], x, c.t(), alpha=-2.0)
    return dist.argmin(dim=1)


def fit_kmeans(frames: np.ndarray, k: int, iterations: int, seed: int,
               spherical: bool = False, noise: float = 0.05) -> np.ndarray:
    """frames float32 [N, D] → centroids float32 [k, D].

    Initial centroids are k distinct frames drawn with `seed`; when N < k every frame is used
    and the remaining centroids are frames again plus Gaussian noise of `noise`·(per-dimension
    std). Lloyd iterations then move each centroid to the mean of its frames (a centroid that
    gets no frame stays where it is). `spherical`: frames and centroids are unit vectors
    (cosine k-means), as the VQ06 quantiser compares L2-normalised features.
    """
    x = np.asarray(frames, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"need frames [N, D] with N > 0, got {x.shape}")
    rng = np.random.default_rng(seed)
    n, d = x.shape
    if n >= k:
        idx = rng.choice(n, size=k, replace=False)
        c = x[idx].copy()
    else:
        idx = np.concatenate([rng.permutation(n), rng.choice(n, size=k - n, replace=True)])
        c = x[idx].copy()
        scale = x.std(axis=0, keepdims=True) * noise
        c[n:] += (rng.standard_normal((k - n, d)) * scale).astype(np.float32)
    xt = torch.from_numpy(x)
    ct = torch.from_numpy(c)
    if spherical:
        ct = torch.nn.functional.normalize(ct, dim=1)
    for _ in range(iterations):
        assign = _nearest(xt, ct)
        counts = torch.bincount(assign, minlength=k).to(torch.float32)
        sums = torch.zeros_like(ct).index_add_(0, assign, xt)
        used = counts > 0
        means = sums[used] / counts[used, None]
        ct = ct.clone()
        ct[used] = torch.nn.functional.normalize(means, dim=1) if spherical else means
    return ct.numpy().astype(np.float32)
