"""What the checked ONNX exporters (export_vq02_onnx.py, export_flow_onnx.py) share: the
up-to-date test against the .json sidecar, one exporter per output file, the legacy exporter's
warnings silenced, and writing the graph and its sidecar so that a crash never leaves a
sidecar describing another graph."""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

from python_backends.file_io import onnx_sidecar_path

REPO = Path(__file__).resolve().parents[1]


def code_fingerprint(sources: tuple[str, ...]) -> str:
    """sha256 over the project files whose changes change the exported graph."""
    h = hashlib.sha256()
    for rel in sources:
        h.update(rel.encode() + b"\0" + (REPO / rel).read_bytes() + b"\0")
    return h.hexdigest()


def read_sidecar(onnx_path: Path) -> dict | None:
    try:
        return json.loads(onnx_sidecar_path(onnx_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_up_to_date(onnx_path: Path, digest: str, opset: int, fingerprint: str, fmt: int) -> bool:
    """FILE exists with the size its sidecar records, exported from these weights by this code
    at this opset, and its check passed."""
    meta = read_sidecar(onnx_path)
    if not meta or not onnx_path.is_file():
        return False
    return (meta.get("format") == fmt and meta.get("weights", {}).get("sha256") == digest
            and meta.get("opset") == opset and meta.get("code_fingerprint") == fingerprint
            and meta.get("check", {}).get("passed") is True
            and meta.get("onnx_file", {}).get("bytes") == onnx_path.stat().st_size)


@contextlib.contextmanager
def locked_output(out: Path):
    """Hold the output file's lock (one exporter per file at a time)."""
    if out.suffix != ".onnx":
        raise ValueError(f"--out must end in .onnx, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(f".{out.name}.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def quiet_exporter():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the legacy exporter is chosen
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        yield


class StagedExport:
    """A temporary graph file beside `out`; `publish(meta)` writes the sidecar and renames both
    into place (the .onnx first: a crash between the renames leaves old metadata, which is then
    not up to date). Whatever was not published is removed on exit."""

    def __init__(self, out: Path):
        self.out = out
        self.tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        sidecar = onnx_sidecar_path(out)
        self._tmp_meta = sidecar.with_name(f".{sidecar.name}.tmp{os.getpid()}")

    def publish(self, meta: dict) -> None:
        self._tmp_meta.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(self.tmp, self.out)
        os.replace(self._tmp_meta, onnx_sidecar_path(self.out))

    def __enter__(self) -> "StagedExport":
        return self

    def __exit__(self, *exc) -> None:
        self.tmp.unlink(missing_ok=True)
        self._tmp_meta.unlink(missing_ok=True)


def main(argv: list[str] | None, description: str, source: tuple[str, str], default_out: str,
         default_opset: int, export: Callable, check_failed: type, log: logging.Logger) -> int:
    """The exporters' command line: `--<source> DIR [--out FILE] [--opset N] [--force]`; prints
    the written (or up-to-date) path; exit 3 when the check refused the graph."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument(f"--{source[0]}", type=Path, required=True, help=source[1])
    ap.add_argument("--out", type=Path, default=None, help=f"ONNX file to write (default {default_out})")
    ap.add_argument("--opset", type=int, default=default_opset)
    ap.add_argument("--force", action="store_true", help="export even when the file is up to date")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s", stream=sys.stderr)
    try:
        path = export(getattr(args, source[0]), args.out, args.opset, args.force)
    except check_failed as exc:
        log.error("stage=check failed: %s", exc)
        return 3
    print(path)
    return 0
