"""The Python backend's stub: its utility module and the one lock every call into its IPC holds.

`triton_python_backend_utils` exists only inside the stub, so it is imported lazily (unit tests
put a stand-in into `sys.modules`).
"""
from __future__ import annotations

import sys
import threading
import traceback

# Triton 2.51's Python backend crashes (segfault in libtriton_python, then a boost interprocess
# lock_exception) when several threads of one stub talk to the server at once (server issue
# #8882; seen here with concurrent clones). Every call our worker threads make into the stub's
# IPC (sending a BLS request, cancelling it, asking whether a request was cancelled, sending a
# response, logging, metrics) holds this lock; waiting for BLS responses does not.
STUB_IPC_LOCK = threading.RLock()


def pb():
    """The Python backend's utility module (`triton_python_backend_utils`)."""
    import triton_python_backend_utils

    return triton_python_backend_utils


def is_cancelled(request) -> bool:
    """request.is_cancelled() under the IPC lock (it asks the server)."""
    with STUB_IPC_LOCK:
        return bool(request.is_cancelled())


def _log(level: str, text: str) -> None:
    """Triton's log at `level` (log_error / log_warn / log_info), stderr outside the stub."""
    try:
        with STUB_IPC_LOCK:
            getattr(pb().Logger, level)(text)
    except Exception:  # outside the stub, or a stub without Logger
        print(text, file=sys.stderr, flush=True)


def log_internal(exc: BaseException) -> None:
    _log("log_error", "".join(traceback.format_exception(exc)))


def log_warning(text: str) -> None:
    _log("log_warn", text)


def log_info(text: str) -> None:
    _log("log_info", text)
