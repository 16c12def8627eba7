"""Atomic file writes and hashing for the generator."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_open(path: Path):
    """Open a temporary sibling of `path` for binary writing; it replaces `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def temp_path_for(path: Path) -> Path:
    """A sibling temporary name for writers that need a path (e.g. torch.onnx.export)."""
    return Path(path).with_name(f".{Path(path).name}.tmp{os.getpid()}")


