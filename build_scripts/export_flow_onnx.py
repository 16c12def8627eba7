"""Export the flow's DiT estimator to ONNX, check it against PyTorch, write it atomically.

    python -m build_scripts.export_flow_onnx --cosyvoice DIR [--out FILE] [--opset 18] [--force]

DIR is a CosyVoice-300M-25Hz directory (cosyvoice.yaml, flow.pt). The graph is
`DiT.forward(x, mask, mu, t, spks, cond) → estimator_out`, traced with the TorchScript exporter
(dynamo=False) in float32, with a dynamic batch axis (2 rows per request: guidance) and a
dynamic time axis (mel frames of prompt + target).

Before anything is written, onnxruntime runs the graph on several batches shaped as
`solve_euler` calls it (each request's conditioned row, then its unconditioned one; padded
masks); the largest absolute difference from PyTorch must be at most 1e-4, otherwise nothing
is written. Then FILE (default build/engines/flow_estimator.<weights hash>.onnx) and FILE.json
(weights sha256, opset, versions, I/O, check results) replace any old ones, each by a rename.
An existing FILE whose sidecar matches the weights, opset and exporter code is left alone
unless --force.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from build_scripts import onnx_export
from python_backends.decoder.estimator_engine import OUTPUT, default_onnx_path, weights_digest
from python_backends.decoder.cosyvoice_yaml import load_cosyvoice_yaml
from python_backends.decoder.flow import (COSYVOICE_YAML_FILE, FLOW_FILE, flow_config_from_yaml,
                                          load_state_strict)
from python_backends.decoder.flow_dit import DiT
from python_backends.engines.metadata import onnx_signature
from python_backends.engines.profiles import FLOW_INPUTS
from python_backends.file_io import log_stage, sha256_file
from python_backends.onnx_runtime import onnx_session

LOG = logging.getLogger("export_flow_onnx")
FORMAT = 1
DEFAULT_OPSET = 18
MAX_ABS_DIFF = 1e-4
# code whose changes change the exported graph: a sidecar written by other code is stale
CODE_SOURCES = ("python_backends/decoder/flow_dit.py", "build_scripts/export_flow_onnx.py")
AXES = {**{n: {0: "batch", 2: "frames"} for n in ("x", "mask", "mu", "cond", OUTPUT)},
        "t": {0: "batch"}, "spks": {0: "batch"}}
# check cases: mel frames of each request of one call (2 rows each); 2 is one token row
CHECK_CASES = ((2,), (57,), (40, 96), (120, 13, 77))
CHECK_SEED = 11


class ExportCheckFailed(RuntimeError):
    """onnxruntime's velocity differs from PyTorch's by more than MAX_ABS_DIFF: nothing written."""


def is_up_to_date(onnx_path: Path, digest: str, opset: int) -> bool:
    """FILE exists with the size its sidecar records, exported from these weights by this code."""
    return onnx_export.is_up_to_date(onnx_path, digest, opset,
                                     onnx_export.code_fingerprint(CODE_SOURCES), FORMAT)


def guidance_inputs(frames: tuple[int, ...], channels: int, seed: int) -> tuple[torch.Tensor, ...]:
    """(x, mask, mu, t, spks, cond) for len(frames) requests as `solve_euler` batches them:
    conditioned rows, then the same x with mu/spks/cond zeroed; frames past a request are masked."""
    g = torch.Generator().manual_seed(seed)
    b, t_max = len(frames), max(frames)
    x = torch.randn(b, channels, t_max, generator=g)
    mask = (torch.arange(t_max)[None, :] < torch.tensor(frames)[:, None]).float()[:, None, :]
    mu = torch.randn(b, channels, t_max, generator=g) * 2
    spks = torch.randn(b, channels, generator=g)
    cond = torch.randn(b, channels, t_max, generator=g) * 3 - 4
    cond[:, :, t_max // 2:] = 0  # the prompt part only
    t = torch.rand(1, generator=g).expand(2 * b)

    def doubled(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([v, torch.zeros_like(v)])

    return (torch.cat([x, x]), torch.cat([mask, mask]), doubled(mu), t.contiguous(),
            doubled(spks), doubled(cond))


def load_estimator(cosyvoice: Path) -> DiT:
    """The DiT of cosyvoice.yaml with flow.pt's `decoder.estimator.*` tensors, float32, eval."""
    cfg = flow_config_from_yaml(load_cosyvoice_yaml(cosyvoice / COSYVOICE_YAML_FILE))
    state = torch.load(cosyvoice / FLOW_FILE, map_location="cpu", weights_only=True)
    prefix = "decoder.estimator."
    estimator = DiT(cfg.estimator)
    load_state_strict(estimator, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                      cosyvoice / FLOW_FILE)
    return estimator.eval()


def run_checks(estimator: torch.nn.Module, onnx_file: Path, channels: int) -> list[dict]:
    """Velocity of onnxruntime vs PyTorch per case; raises ExportCheckFailed past MAX_ABS_DIFF."""
    session = onnx_session(str(onnx_file), "cpu")
    results, failed = [], []
    for i, frames in enumerate(CHECK_CASES):
        args = guidance_inputs(frames, channels, CHECK_SEED + i)
        t0 = time.perf_counter()
        with torch.inference_mode():
            expected = estimator(*args).numpy()
        t1 = time.perf_counter()
        got = session.run([OUTPUT], {n: a.numpy() for n, a in zip(FLOW_INPUTS, args)})[0]
        t2 = time.perf_counter()
        diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        result = {"requests": len(frames), "batch": 2 * len(frames), "frames": list(frames),
                  "max_abs_diff": diff, "max_abs_value": float(np.abs(expected).max()),
                  "torch_ms": round(1000 * (t1 - t0), 1), "onnxruntime_ms": round(1000 * (t2 - t1), 1)}
        LOG.info("stage=check batch=%d frames=%s max_abs_diff=%.2e torch_ms=%.1f onnxruntime_ms=%.1f",
                 result["batch"], frames, diff, result["torch_ms"], result["onnxruntime_ms"])
        results.append(result)
        if not diff <= MAX_ABS_DIFF:
            failed.append(f"batch {result['batch']} frames {list(frames)}: {diff:.3g}")
    if failed:
        raise ExportCheckFailed(f"{onnx_file}: onnxruntime's velocity differs from PyTorch's by "
                                f"more than {MAX_ABS_DIFF:g}: {', '.join(failed)}")
    return results


def _export_locked(cosyvoice: Path, out: Path, opset: int, digest: str, per_file: dict,
                   force: bool) -> Path:
    if not force and is_up_to_date(out, digest, opset):
        LOG.info("stage=skip seconds=0.00 out=%s weights=%s (up to date)", out, digest[:12])
        return out
    t_all = time.perf_counter()
    with log_stage(LOG, "load") as info:
        estimator = load_estimator(cosyvoice)
        channels = estimator.out_channels
        info["params"] = sum(p.numel() for p in estimator.parameters())
    with onnx_export.StagedExport(out) as staged:
        tmp = staged.tmp
        with log_stage(LOG, "export", opset=opset) as info:
            with torch.no_grad(), onnx_export.quiet_exporter():
                torch.onnx.export(estimator, guidance_inputs((17, 9), channels, 0), str(tmp),
                                  input_names=list(FLOW_INPUTS), output_names=[OUTPUT],
                                  dynamic_axes=AXES, opset_version=opset, dynamo=False)
            info["bytes"] = tmp.stat().st_size
        export_seconds = time.perf_counter() - t_all
        with log_stage(LOG, "check") as info:
            checks = run_checks(estimator, tmp, channels)
            info["passed"] = True
        with log_stage(LOG, "write", out=out):
            staged.publish({
                "format": FORMAT, "model": "flow_estimator",
                "exporter": "build_scripts/export_flow_onnx.py",
                "code_fingerprint": onnx_export.code_fingerprint(CODE_SOURCES),
                "weights": {"dir": str(cosyvoice.resolve()), "sha256": digest, "files": per_file},
                "opset": opset, "torch": torch.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "dtype": "float32",
                **{k: [t.to_json() for t in v] for k, v in zip(("inputs", "outputs"), onnx_signature(tmp))},
                "dynamic_axes": AXES,
                "estimator": dataclasses.asdict(estimator.cfg),
                "onnx_file": {"name": out.name, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)},
                "export_seconds": round(export_seconds, 2),
                "check": {"passed": True, "max_abs_diff_allowed": MAX_ABS_DIFF, "cases": checks},
            })
    LOG.info("stage=done seconds=%.2f out=%s bytes=%d weights=%s", time.perf_counter() - t_all, out,
             out.stat().st_size, digest[:12])
    return out


def export(cosyvoice: str | Path, out: str | Path | None = None, opset: int = DEFAULT_OPSET,
           force: bool = False) -> Path:
    """Export, check and write the estimator ONNX for `cosyvoice` (skipped when up to date) → path."""
    cosyvoice = Path(cosyvoice)
    with log_stage(LOG, "hash", weights=cosyvoice) as info:
        digest, per_file = weights_digest(cosyvoice)
        info["sha256"] = digest[:12]
    out = Path(out) if out is not None else default_onnx_path(digest)
    with onnx_export.locked_output(out):
        return _export_locked(cosyvoice, out, int(opset), digest, per_file, force)


def main(argv: list[str] | None = None) -> int:
    return onnx_export.main(argv, __doc__.split("\n\n")[0], ("cosyvoice", "CosyVoice-300M-25Hz directory (cosyvoice.yaml, flow.pt)"),
                            "build/engines/flow_estimator.<weights hash>.onnx", DEFAULT_OPSET, export, ExportCheckFailed, LOG)


if __name__ == "__main__":
    sys.exit(main())
