"""What both synthetic-weight builders share: a fingerprint of the generating code, a manifest
written last (so a half-written directory is never taken as complete), a lock per directory
and the refusal to overwrite files we did not write (maybe real weights)."""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Iterable

from build_scripts.synthetic.files import write_bytes_atomic
from python_backends.file_io import sha256_file

REPO = Path(__file__).resolve().parents[2]
INCOMPLETE_MARKER = ".synthetic_weights.incomplete"
LOCK_FILE = ".synthetic_weights.lock"


class WeightsDirInUse(RuntimeError):
    """DIR holds weight files this generator did not write (maybe real weights)."""


def fingerprint(patterns: Iterable[str], extra: bytes = b"") -> str:
    """sha256 over the project files matching `patterns` (and `extra`)."""
    h = hashlib.sha256()
    for pattern in patterns:
        for path in sorted(REPO.glob(pattern)):
            h.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(extra)
    return h.hexdigest()


def read_manifest(out: Path, name: str) -> dict | None:
    try:
        return json.loads((Path(out) / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(out: Path, name: str, header: dict, files: Iterable[str]) -> bool:
    """`out` holds every file in `files` with the sizes a manifest with this `header` records."""
    manifest = read_manifest(out, name)
    if not manifest or any(manifest.get(k) != v for k, v in header.items()):
        return False
    recorded = manifest.get("files", {})
    return set(recorded) == set(files) and all(
        (Path(out) / f).is_file() and (Path(out) / f).stat().st_size == meta.get("bytes")
        for f, meta in recorded.items())


def guard_foreign_files(out: Path, name: str, files: Iterable[str]) -> None:
    if (out / name).exists() or (out / INCOMPLETE_MARKER).exists():
        return
    present = [f for f in files if (out / f).exists()]
    if present:
        raise WeightsDirInUse(
            f"{out} already holds {', '.join(present)} but no {name}: these may be real "
            "weights, so they are not overwritten; choose another --out or pass --force")


def begin(out: Path, name: str, header: dict) -> None:
    write_bytes_atomic(out / INCOMPLETE_MARKER, json.dumps(header).encode())
    (out / name).unlink(missing_ok=True)


def finish(out: Path, name: str, header: dict, files: Iterable[str]) -> None:
    recorded = {f: {"bytes": (out / f).stat().st_size, "sha256": sha256_file(out / f)} for f in files}
    write_bytes_atomic(out / name, (json.dumps({**header, "files": recorded}, indent=2) + "\n").encode())
    (out / INCOMPLETE_MARKER).unlink(missing_ok=True)


@contextlib.contextmanager
def locked(out: Path):
    """One builder per directory at a time."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def main(argv: list[str] | None, description: str, presets: Iterable[str], build: Callable,
         log: logging.Logger) -> int:
    """The generators' command line: `--preset P --out DIR [--seed N] [--force]`; exit 2 when
    DIR holds files we did not write."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--preset", choices=sorted(presets), required=True)
    ap.add_argument("--out", type=Path, required=True, help="weights directory to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even if complete; overwrite foreign files")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s", stream=sys.stderr)
    try:
        build(args.preset, args.out, args.seed, args.force)
    except WeightsDirInUse as exc:
        log.error("%s", exc)
        return 2
    return 0
