"""Build a TensorRT plan for one engine (a tokenizer encoder or the flow's DiT estimator), with
explicit profiles and a metadata sidecar.

    python -m build_scripts.build_tensorrt --onnx FILE --out PLAN [--fp16 | --fp32]
        --max-batch-size N [--max-audio-seconds 120] [--opt-batch-size N] [--opt-audio-seconds 10]
        [--kind auto|vq02_encoder|vq06_encoder|flow_estimator] [--max-length 8192]
        [--limit ROLE=MIN:OPT:MAX ...] [--tf32]
        [--workspace-gb G] [--opt-level 3] [--fp32-after TENSOR] [--no-fp32-norms]
        [--force] [--dry-run]

FILE is the vq02 encoder ONNX (build_scripts/export_vq02_onnx.py), `speech_tokenizer_v1.onnx`
or the flow estimator ONNX (build_scripts/export_flow_onnx.py); the kind is told by the input
names. One optimization profile covers every call the Python models can make with Triton
`max_batch_size` N and audio up to the given length (python_backends/engines/profiles.py):
vq02 frames/windows/rows up to N × one utterance's, vq06 pieces up to N × ceil(seconds / 30)
and T up to 3000; opt is a batch of --opt-batch-size utterances of --opt-audio-seconds. For
the flow estimator the batch is 2 (guidance) to 2N, opt 2 × (N / 2), and the seconds are the
prompt's (--max-prompt-seconds of the repository): T up to 2 · (3 · ceil(max_length / 5) +
3 · ceil(25 · seconds / 3)) mel frames, the LLM's --max-length ids of target plus the prompt.

fp32 (default) clears TF32 unless --tf32, so tokens equal the ONNX Runtime path's; fp16 asks
TensorRT (PREFER_PRECISION_CONSTRAINTS) to keep normalisation/softmax layers and, for the vq02
encoder, every float layer after the encoder output `enc` (the k-means distances and argmin)
in fp32.

PLAN and PLAN.json (GPU name, compute capability, TensorRT version, precision, profiles,
I/O, sha256 of the ONNX and of the plan) are written atomically (temporary file + rename,
the plan first: a plan whose metadata is older fails the sha256 check at load). An existing
plan whose metadata matches this ONNX, these options, this GPU and this TensorRT is kept
unless --force. The plan is built on the current CUDA device (pick it with
CUDA_VISIBLE_DEVICES). --dry-run prints the profiles and exits without TensorRT.

Exit codes: 0 done, 2 bad arguments or profile, 3 TensorRT or a GPU missing, 4 build failed.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

from python_backends.engines.metadata import (Environment, PlanMetadata, atomic_write, check_plan,
                                             metadata_path, onnx_signature, probe_environment,
                                             read_metadata, write_metadata)
from python_backends.file_io import sha256_file
from python_backends.engines.profiles import (DEFAULT_OPT_SECONDS, FLOW, KINDS, VQ02, Limits,
                                             Profile, ProfileError, Tensor, derive_limits,
                                             detect_kind, input_profiles, parse_limit)
from python_backends.settings import LLM

LOG = logging.getLogger("build_tensorrt")
PRECISIONS = ("fp32", "fp16")
DEFAULT_FP32_AFTER = {VQ02: "enc"}  # k-means tail of the vq02 encoder


class ToolMissing(RuntimeError):
    """TensorRT or a GPU is not available here."""


class BuildFailed(RuntimeError):
    """TensorRT could not parse or build the network."""


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise ToolMissing(
            "TensorRT is not installed in this Python environment (import tensorrt failed: "
            f"{exc}). Build plans where they will be served: inside the Triton container "
            "(nvcr.io/nvidia/tritonserver:<release>-py3, whose TensorRT matches its TensorRT "
            "backend) after `pip install tensorrt==<that version>`, on the same GPU model") from None
    return tensorrt


def plan_inputs(onnx: Path, kind: str | None, max_batch_size: int, max_audio_seconds: float,
                opt_batch_size: int | None, opt_audio_seconds: float,
                overrides: dict[str, tuple[int, int, int]], max_length: int = LLM.max_length
                ) -> tuple[str, tuple[Tensor, ...], tuple[Tensor, ...], Limits, dict[str, Profile]]:
    """(kind, inputs, outputs, limits, profiles) for an ONNX file: no TensorRT needed."""
    inputs, outputs = onnx_signature(onnx)
    kind = detect_kind(inputs) if kind in (None, "auto") else kind
    if kind not in KINDS:
        raise ProfileError(f"--kind must be auto or one of {', '.join(KINDS)}, not '{kind}'")
    limits = derive_limits(kind, max_batch_size, max_audio_seconds, opt_batch_size, opt_audio_seconds,
                           max_length=max_length)
    limits.update(overrides)
    return kind, inputs, outputs, limits, input_profiles(kind, inputs, limits)


def keep_fp32_layers(trt, network, after_tensor: str | None, norms: bool,
                     pattern: str | None = None) -> list[str]:
    """Pin layers to fp32 inside an fp16 build: normalisation/softmax layers (`norms`), every
    layer after the one producing network output `after_tensor`, and layers whose name matches
    `pattern`. Returns the pinned layers' names."""
    after_index = None
    if after_tensor:
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if any(layer.get_output(j).name == after_tensor for j in range(layer.num_outputs)):
                after_index = i
        if after_index is None:
            LOG.warning("no layer produces '%s'; no k-means tail pinned to fp32", after_tensor)
    regex = re.compile(pattern) if pattern else None
    kinds = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX} if norms else set()
    floats = (trt.float32, trt.float16)
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not (layer.type in kinds or (after_index is not None and i > after_index)
                or (regex is not None and regex.search(layer.name))):
            continue
        tensors = [layer.get_input(j) for j in range(layer.num_inputs)]
        tensors += [layer.get_output(j) for j in range(layer.num_outputs)]
        if not any(t is not None and t.dtype in floats for t in tensors):
            continue  # shape arithmetic, integer casts: no precision to pin
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in floats:
                layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    return pinned


def serialize_network(trt, onnx: Path, profiles: dict[str, Profile], precision: str, tf32: bool,
                      workspace_gb: float | None, opt_level: int | None, fp32_after: str | None,
                      fp32_norms: bool, fp32_pattern: str | None) -> tuple[bytes, dict]:
    """Parse the ONNX, set the profile and precision, build; returns (plan bytes, build info)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildFailed(f"TensorRT could not parse {onnx}: " + "; ".join(errors))
    config = builder.create_builder_config()
    if workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if opt_level is not None:
        config.builder_optimization_level = int(opt_level)
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    pinned: list[str] = []
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        pinned = keep_fp32_layers(trt, network, fp32_after, fp32_norms, fp32_pattern)
        if pinned:  # prefer: a layer TensorRT cannot run in fp32 falls back with a warning
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    network_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if network_inputs != set(profiles):
        raise BuildFailed(f"network inputs {sorted(network_inputs)} differ from the ONNX inputs "
                          f"{sorted(profiles)}")
    profile = builder.create_optimization_profile()
    for name, p in profiles.items():
        profile.set_shape(name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildFailed(f"TensorRT failed to build {onnx} (see its log above)")
    return bytes(serialized), {"fp32_layers": len(pinned), "layers": network.num_layers}


def is_up_to_date(out: Path, onnx_sha: str, precision: str, tf32: bool,
                  profiles: dict[str, Profile], env: Environment) -> bool:
    try:
        meta = check_plan(out, env)
    except Exception:  # missing, stale, built elsewhere: rebuild
        return False
    return (meta.onnx_sha256 == onnx_sha and meta.precision == precision and meta.tf32 == tf32
            and meta.profiles == profiles)


def build_plan(onnx: str | Path, out: str | Path, precision: str = "fp32", max_batch_size: int = 16,
               max_audio_seconds: float = 120.0, *, kind: str | None = None,
               opt_batch_size: int | None = None, opt_audio_seconds: float = DEFAULT_OPT_SECONDS,
               limits: dict[str, tuple[int, int, int]] | None = None, tf32: bool = False,
               workspace_gb: float | None = None, opt_level: int | None = None,
               fp32_after: str | None = "default", fp32_norms: bool = True,
               fp32_pattern: str | None = None, max_length: int = LLM.max_length,
               force: bool = False, trt=None, env: Environment | None = None) -> PlanMetadata:
    """Build (or keep, when up to date) the plan `out` for `onnx`; returns its metadata.

    `trt` and `env` stand in for the tensorrt module and the probed GPU/TensorRT in tests."""
    onnx, out = Path(onnx), Path(out)
    if precision not in PRECISIONS:
        raise ProfileError(f"precision must be one of {PRECISIONS}, not '{precision}'")
    if not onnx.is_file():
        raise ProfileError(f"ONNX file {onnx} does not exist")
    kind, inputs, outputs, lim, profiles = plan_inputs(
        onnx, kind, max_batch_size, max_audio_seconds, opt_batch_size, opt_audio_seconds,
        dict(limits or {}), max_length)
    trt = import_tensorrt() if trt is None else trt
    env = probe_environment(0) if env is None else env
    if env.gpu_name is None:
        raise ToolMissing("no CUDA GPU is visible: TensorRT builds a plan for the GPU it runs on")
    env = Environment(env.gpu_name, env.compute_capability, str(trt.__version__))
    onnx_sha = sha256_file(onnx)
    if not force and is_up_to_date(out, onnx_sha, precision, tf32, profiles, env):
        LOG.info("stage=skip out=%s (up to date: same ONNX, options, GPU and TensorRT)", out)
        return read_metadata(out)
    if fp32_after == "default":
        fp32_after = DEFAULT_FP32_AFTER.get(kind)
    LOG.info("stage=build kind=%s precision=%s gpu=%r tensorrt=%s profiles=%s", kind, precision,
             env.gpu_name, env.tensorrt_version,
             json.dumps({k: p.to_json() for k, p in profiles.items()}))
    t0 = time.perf_counter()
    plan, info = serialize_network(trt, onnx, profiles, precision, tf32, workspace_gb, opt_level,
                                   fp32_after if precision == "fp16" else None, fp32_norms,
                                   fp32_pattern)
    seconds = time.perf_counter() - t0
    atomic_write(out, plan)
    meta = PlanMetadata(
        kind=kind, precision=precision, tf32=tf32, gpu_name=env.gpu_name,
        compute_capability=env.compute_capability or "unknown",
        tensorrt_version=env.tensorrt_version, plan_file=out.name, plan_bytes=len(plan),
        plan_sha256=sha256_file(out), onnx_path=str(onnx.resolve()), onnx_sha256=onnx_sha,
        max_batch_size=max_batch_size, max_audio_seconds=float(max_audio_seconds), limits=lim,
        inputs=inputs, outputs=outputs, profiles=profiles,
        extra={"seconds": round(seconds, 1), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "opt_batch_size": opt_batch_size, "opt_audio_seconds": opt_audio_seconds,
               "workspace_gb": workspace_gb, "opt_level": opt_level,
               "fp32_after": fp32_after if precision == "fp16" else None,
               "fp32_norms": fp32_norms if precision == "fp16" else None,
               **({"max_length": max_length} if kind == FLOW else {}), **info})
    write_metadata(out, meta)
    LOG.info("stage=done out=%s bytes=%d seconds=%.1f metadata=%s", out, len(plan), seconds,
             metadata_path(out))
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", type=Path, required=True, help="vq02 encoder or speech_tokenizer_v1 ONNX")
    ap.add_argument("--out", type=Path, required=True, help="plan file to write (PLAN.json beside it)")
    precision = ap.add_mutually_exclusive_group()
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16")
    precision.add_argument("--fp32", dest="precision", action="store_const", const="fp32")
    ap.add_argument("--max-batch-size", type=int, required=True,
                    help="the Triton max_batch_size of the Python model that calls this engine")
    ap.add_argument("--max-audio-seconds", type=float, default=120.0)
    ap.add_argument("--opt-batch-size", type=int, default=None, help="default: --max-batch-size (flow_estimator: half of it, 2 rows each)")
    ap.add_argument("--opt-audio-seconds", type=float, default=DEFAULT_OPT_SECONDS)
    ap.add_argument("--kind", default="auto", choices=("auto",) + KINDS)
    ap.add_argument("--max-length", type=int, default=LLM.max_length,
                    help="flow_estimator: the LLM's max_length (ids of prompt + generated)")
    ap.add_argument("--limit", action="append", default=[], metavar="ROLE=MIN:OPT:MAX",
                    help="override one axis role's range (frames, windows, rows, batch)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 (off by default)")
    ap.add_argument("--workspace-gb", type=float, default=None)
    ap.add_argument("--opt-level", type=int, default=None, help="builder optimization level 0-5")
    ap.add_argument("--fp32-after", default="default",
                    help="fp16: pin layers after the producer of this output to fp32 "
                         "(default: 'enc' for the vq02 encoder; 'none' to disable)")
    ap.add_argument("--no-fp32-norms", dest="fp32_norms", action="store_false",
                    help="fp16: let normalisation/softmax layers run in fp16 too")
    ap.add_argument("--fp32-layers", default=None, metavar="REGEX",
                    help="fp16: also pin layers whose name matches")
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    ap.add_argument("--dry-run", action="store_true", help="print kind and profiles, build nothing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s", stream=sys.stderr)
    try:
        overrides = dict(parse_limit(t) for t in args.limit)
        if args.dry_run:
            kind, inputs, _, lim, profiles = plan_inputs(
                args.onnx, args.kind, args.max_batch_size, args.max_audio_seconds,
                args.opt_batch_size, args.opt_audio_seconds, overrides, args.max_length)
            print(json.dumps({"kind": kind, "limits": {k: list(v) for k, v in lim.items()},
                              "profiles": {k: p.to_json() for k, p in profiles.items()}}, indent=2))
            return 0
        meta = build_plan(args.onnx, args.out, args.precision or "fp32", args.max_batch_size,
                          args.max_audio_seconds, kind=args.kind, opt_batch_size=args.opt_batch_size,
                          opt_audio_seconds=args.opt_audio_seconds, limits=overrides, tf32=args.tf32,
                          workspace_gb=args.workspace_gb, opt_level=args.opt_level,
                          fp32_after=None if args.fp32_after == "none" else args.fp32_after,
                          fp32_norms=args.fp32_norms, fp32_pattern=args.fp32_layers,
                          max_length=args.max_length, force=args.force)
    except ProfileError as exc:
        print(f"build_tensorrt: error: {exc}", file=sys.stderr)
        return 2
    except ToolMissing as exc:
        print(f"build_tensorrt: error: {exc}", file=sys.stderr)
        return 3
    except BuildFailed as exc:
        print(f"build_tensorrt: error: {exc}", file=sys.stderr)
        return 4
    print(args.out)
    LOG.info("gpu=%r tensorrt=%s precision=%s", meta.gpu_name, meta.tensorrt_version, meta.precision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
