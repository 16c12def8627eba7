"""Small helpers the build scripts and engine loaders share: file digests and stage logging."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def log_stage(log: logging.Logger, name: str, **fields):
    """One structured progress line per long step: `stage=NAME seconds=S key=value ...`;
    the body may add fields to the yielded dict."""
    t0 = time.perf_counter()
    extra: dict = {}
    yield extra
    items = " ".join(f"{k}={v}" for k, v in {**fields, **extra}.items())
    log.info("stage=%s seconds=%.2f%s", name, time.perf_counter() - t0, f" {items}" if items else "")


def combined_sha256(per_file: dict[str, str]) -> str:
    """One digest over several files' sha256, by name (order-independent)."""
    return hashlib.sha256("".join(f"{n}:{h}\n" for n, h in sorted(per_file.items())).encode()).hexdigest()


def onnx_sidecar_path(onnx_path: str | Path) -> Path:
    """The .json beside an exported .onnx (export facts, weights digest, check results)."""
    return Path(onnx_path).with_suffix(".json")
