"""The CPU runtime the Step1 LLM runs on: Intel's OpenMP runtime and the thread count.

torch's CPU wheel is built against GNU OpenMP (libgomp). Every oneDNN / ATen parallel region of
a decode step (about 400 per step for Step1) goes through it. Intel's runtime (libiomp5, from
the `intel-openmp` wheel that requirements.lock pins; it also implements libgomp's `GOMP_*`
entry points) made a bf16 decode step ~1.5x faster on the Intel VM issue 14 was measured on;
on the AMD EPYC VM of perf/RESULTS.md ("Step1 decode against the memory roof") it measured
no different from GNU OpenMP once the weights are prepacked, and somewhat faster without.

The switch has to happen before torch is imported: `use_intel_openmp()` at the top of the
entry point (the `llm_stream` model.py, perf scripts) loads libiomp5 into the process's global
symbol scope, so when torch's libraries are loaded afterwards their `GOMP_*` / `omp_*`
references bind to it, as with `LD_PRELOAD`.

`STEP_AUDIO_OPENMP=gnu` keeps GNU OpenMP (for comparisons). Nothing here imports torch.
"""
from __future__ import annotations

import ctypes
import os
import sys
import sysconfig
from pathlib import Path

INTEL_OPENMP_LIBRARY = "libiomp5.so"
OPENMP_ENV = "STEP_AUDIO_OPENMP"  # "intel" (default, when the library is installed) or "gnu"
# Intel OpenMP settings used unless the environment already sets them. KMP_BLOCKTIME: how long
# an idle OpenMP thread spins before it sleeps. Intel's default, 200 ms, keeps both cores busy
# after every step, taking them from the other stub processes of a shared machine; 1 ms still
# spans the gaps between a decode step's back-to-back regions (0, 1, 200 ms and infinite
# measured alike within this VM's noise). KMP_AFFINITY is left alone: pinning the two threads
# (granularity=fine,compact) measured 2-3x slower on this VM (perf/RESULTS.md).
INTEL_OPENMP_DEFAULTS = {"KMP_BLOCKTIME": "1"}

_state = {"runtime": None}


def intel_openmp_path() -> Path | None:
    """libiomp5.so of the `intel-openmp` wheel in this interpreter's environment, if installed
    (the wheel puts it in lib/ of pip's data directory: the virtualenv, or /usr/local for a
    distribution's interpreter)."""
    prefixes = (sysconfig.get_paths()["data"], sys.prefix, sys.exec_prefix, sys.base_prefix)
    for prefix in dict.fromkeys(prefixes):
        path = Path(prefix) / "lib" / INTEL_OPENMP_LIBRARY
        if path.is_file():
            return path
    return None


def openmp_runtime() -> str:
    """Which OpenMP runtime torch's parallel regions use in this process: "intel" (loaded
    before torch by `use_intel_openmp`), "gnu", or "unknown" when torch is not loaded yet."""
    if _state["runtime"] is not None:
        return _state["runtime"]
    return "gnu" if "torch" in sys.modules else "unknown"


def wanted_runtime() -> str:
    choice = os.environ.get(OPENMP_ENV, "intel").strip().lower() or "intel"
    if choice not in ("intel", "gnu"):
        raise ValueError(f"{OPENMP_ENV} is '{choice}'; allowed: intel, gnu")
    return choice


def use_intel_openmp() -> str:
    """Make torch run its parallel regions on Intel OpenMP; call it before torch is imported.
    Returns the runtime in use: "intel", or "gnu" when the library is missing, when
    STEP_AUDIO_OPENMP=gnu, or when torch was imported already (then nothing changes)."""
    current = openmp_runtime()
    if current == "intel" or "torch" in sys.modules or wanted_runtime() == "gnu":
        _state["runtime"] = "intel" if current == "intel" else "gnu"
        return _state["runtime"]
    path = intel_openmp_path()
    if path is None:
        _state["runtime"] = "gnu"
        return "gnu"
    for key, value in INTEL_OPENMP_DEFAULTS.items():
        os.environ.setdefault(key, value)  # read by the runtime at its first parallel region
    ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL | os.RTLD_NOW)
    _state["runtime"] = "intel"
    return "intel"


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
