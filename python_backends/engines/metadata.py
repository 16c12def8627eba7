"""The JSON sidecar of a TensorRT plan, and the check that refuses a plan built elsewhere.

A TensorRT plan only runs on the GPU model and TensorRT version it was built with (another
version fails to deserialize; another GPU of the same architecture may load it and run
slowly or wrongly). build_scripts/build_tensorrt.py writes `PLAN.json` next to `PLAN`:

    {"format": 1, "kind": "vq02_encoder", "precision": "fp16", "tf32": false,
     "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
     "tensorrt_version": "10.8.0.43",
     "plan": {"file": "model.plan", "bytes": ..., "sha256": ...},
     "onnx": {"path": ..., "sha256": ...},
     "max_batch_size": 16, "max_audio_seconds": 120.0, "limits": {role: [min, opt, max]},
     "inputs": [{"name", "dtype", "shape"}], "outputs": [...],
     "profiles": {input: {"min": [...], "opt": [...], "max": [...]}}, ...}

`check_plan` (used when a repository is built and when a model that calls the engine
loads) compares it with this machine: same GPU name, compute capability and TensorRT
major.minor.patch, and the plan's bytes unchanged; anything else raises `PlanMismatch`
saying what was found and how to rebuild. Nothing here needs TensorRT or a GPU: the
environment is probed lazily (torch.cuda or nvidia-smi; the tensorrt module or
libnvinfer's getInferLibVersion).
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Mapping

from ..file_io import sha256_file

from .profiles import Profile, Tensor

FORMAT = 1
REBUILD_HINT = ("rebuild it on this machine with `python -m build_scripts.build_tensorrt --onnx ... "
                "--out {plan}` (see its --help)")


class PlanMismatch(RuntimeError):
    """The plan cannot be served here; the message says why and how to rebuild."""


@dataclasses.dataclass(frozen=True)
class Environment:
    """What a plan is tied to, as found on this machine (None: could not be determined)."""

    gpu_name: str | None
    compute_capability: str | None
    tensorrt_version: str | None


def metadata_path(plan: str | Path) -> Path:
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")




def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- environment

def version_tuple(version: str | None, parts: int = 3) -> tuple[int, ...] | None:
    if not version:
        return None
    try:
        return tuple(int(p) for p in str(version).split(".")[:parts])
    except ValueError:
        return None


def _decode_infer_lib_version(code: int) -> str:
    """getInferLibVersion(): major·10000 + minor·100 + patch from TensorRT 10 on, major·1000 +
    minor·100 + patch before."""
    if code >= 100000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def tensorrt_version() -> str | None:
    """The TensorRT this process would run plans with: the `tensorrt` module's version, else
    the version libnvinfer reports (what Triton's TensorRT backend links), else None."""
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:
        pass
    for name in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"):
        try:
            lib = ctypes.CDLL(name)
            lib.getInferLibVersion.restype = ctypes.c_int32
            return _decode_infer_lib_version(int(lib.getInferLibVersion()))
        except (OSError, AttributeError):
            continue
    return None


def gpu_identity(device_index: int = 0) -> tuple[str | None, str | None]:
    """(name, "major.minor" compute capability) of GPU `device_index`, or (None, None)."""
    try:
        import torch

        if torch.cuda.is_available() and device_index < torch.cuda.device_count():
            major, minor = torch.cuda.get_device_capability(device_index)
            return torch.cuda.get_device_name(device_index), f"{major}.{minor}"
    except ImportError:
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", f"--id={device_index}", "--query-gpu=name,compute_cap",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.strip()
            name, _, cap = out.rpartition(",")
            if name:
                return name.strip(), cap.strip()
        except (subprocess.SubprocessError, OSError):
            pass
    return None, None


def probe_environment(device_index: int = 0) -> Environment:
    name, cap = gpu_identity(device_index)
    return Environment(name, cap, tensorrt_version())


# --------------------------------------------------------------------------- metadata

@dataclasses.dataclass(frozen=True)
class PlanMetadata:
    kind: str
    precision: str
    tf32: bool
    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    plan_file: str
    plan_bytes: int
    plan_sha256: str
    onnx_path: str
    onnx_sha256: str
    max_batch_size: int
    max_audio_seconds: float
    limits: dict[str, tuple[int, int, int]]
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    profiles: dict[str, Profile]
    extra: dict = dataclasses.field(default_factory=dict)  # build time, options, versions

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "kind": self.kind, "precision": self.precision, "tf32": self.tf32,
            "gpu": {"name": self.gpu_name, "compute_capability": self.compute_capability},
            "tensorrt_version": self.tensorrt_version,
            "plan": {"file": self.plan_file, "bytes": self.plan_bytes, "sha256": self.plan_sha256},
            "onnx": {"path": self.onnx_path, "sha256": self.onnx_sha256},
            "max_batch_size": self.max_batch_size, "max_audio_seconds": self.max_audio_seconds,
            "limits": {k: list(v) for k, v in self.limits.items()},
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "profiles": {k: p.to_json() for k, p in self.profiles.items()},
            **({"build": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, d: Mapping) -> "PlanMetadata":
        if d.get("format") != FORMAT:
            raise ValueError(f"metadata format {d.get('format')!r}, expected {FORMAT}")
        return cls(
            kind=d["kind"], precision=d["precision"], tf32=bool(d.get("tf32", False)),
            gpu_name=d["gpu"]["name"], compute_capability=d["gpu"]["compute_capability"],
            tensorrt_version=d["tensorrt_version"], plan_file=d["plan"]["file"],
            plan_bytes=int(d["plan"]["bytes"]), plan_sha256=d["plan"]["sha256"],
            onnx_path=d["onnx"]["path"], onnx_sha256=d["onnx"]["sha256"],
            max_batch_size=int(d["max_batch_size"]), max_audio_seconds=float(d["max_audio_seconds"]),
            limits={k: tuple(v) for k, v in d["limits"].items()},
            inputs=tuple(Tensor.from_json(t) for t in d["inputs"]),
            outputs=tuple(Tensor.from_json(t) for t in d["outputs"]),
            profiles={k: Profile.from_json(p) for k, p in d["profiles"].items()},
            extra=dict(d.get("build", {})))


def write_metadata(plan: str | Path, meta: PlanMetadata) -> Path:
    path = metadata_path(plan)
    atomic_write(path, (json.dumps(meta.to_json(), indent=2) + "\n").encode("utf-8"))
    return path


def read_metadata(plan: str | Path) -> PlanMetadata:
    path = metadata_path(plan)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanMismatch(f"TensorRT plan {plan} has no metadata file {path}: it was not built by "
                           f"build_scripts/build_tensorrt.py, so its GPU and TensorRT version are "
                           f"unknown; {REBUILD_HINT.format(plan=plan)}") from None
    except ValueError as exc:
        raise PlanMismatch(f"metadata {path} is not valid JSON ({exc}); "
                           f"{REBUILD_HINT.format(plan=plan)}") from None
    try:
        return PlanMetadata.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanMismatch(f"metadata {path} is incomplete or of another format ({exc!r}); "
                           f"{REBUILD_HINT.format(plan=plan)}") from None


def mismatches(meta: PlanMetadata, env: Environment) -> list[str]:
    """Why a plan described by `meta` must not run in `env` (empty: it may)."""
    problems = []
    if env.gpu_name is None:
        problems.append("no GPU is visible here")
    elif env.gpu_name != meta.gpu_name:
        problems.append(f"it was built for the GPU '{meta.gpu_name}', this is '{env.gpu_name}'")
    if (env.compute_capability is not None and env.gpu_name is not None
            and env.compute_capability != meta.compute_capability):
        problems.append(f"it was built for compute capability {meta.compute_capability}, this GPU "
                        f"has {env.compute_capability}")
    if env.tensorrt_version is None:
        problems.append("TensorRT is not found here (neither the tensorrt module nor libnvinfer)")
    elif version_tuple(env.tensorrt_version) != version_tuple(meta.tensorrt_version):
        problems.append(f"it was built with TensorRT {meta.tensorrt_version}, this is "
                        f"TensorRT {env.tensorrt_version}")
    return problems


def check_plan(plan: str | Path, env: Environment | None = None, device_index: int = 0,
               verify_bytes: bool = True) -> PlanMetadata:
    """The plan's metadata if the plan may be served on GPU `device_index` here; otherwise
    PlanMismatch naming every reason (GPU name, compute capability, TensorRT version, a plan
    file changed since it was built, a missing plan or sidecar)."""
    plan = Path(plan)
    if not plan.is_file():
        raise PlanMismatch(f"TensorRT plan {plan} does not exist; build it with "
                           "`python -m build_scripts.build_tensorrt --onnx ... --out PLAN`")
    meta = read_metadata(plan)
    problems = mismatches(meta, probe_environment(device_index) if env is None else env)
    if verify_bytes:
        size = plan.stat().st_size
        if size != meta.plan_bytes or sha256_file(plan) != meta.plan_sha256:
            problems.append(f"the plan file changed after its metadata was written ({size} bytes, "
                            f"metadata says {meta.plan_bytes})")
    if problems:
        raise PlanMismatch(f"refusing TensorRT plan {plan} ({meta.kind}, {meta.precision}): "
                           + "; ".join(problems) + "; " + REBUILD_HINT.format(plan=plan))
    return meta


# --------------------------------------------------------------------------- ONNX signature

def onnx_signature(path: str | Path) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Inputs and outputs of an ONNX file (initializers excluded), dims as int or symbolic name
    ("?" for an unnamed dynamic axis). Reads the graph only, not external weight data."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def tensors(values) -> tuple[Tensor, ...]:
        out = []
        for v in values:
            if v.name in initializers:
                continue
            tt = v.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
            dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                         for d in tt.shape.dim)
            out.append(Tensor(v.name, dtype, dims))
        return tuple(out)

    return tensors(model.graph.input), tensors(model.graph.output)
