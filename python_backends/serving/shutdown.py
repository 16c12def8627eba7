"""How serve.py's drain reaches the models: files it names in the server's environment.

serve.py creates the drain file when it begins to stop: the entry points (clone, clone_stream,
llm) then answer new requests UNAVAILABLE while those in flight go on. When the drain time is
up it creates the abort file (the drain file's name + ".abort"): what is still running is
answered UNAVAILABLE at once and the LLM stops, so that tritonserver finds nothing in flight
when it unloads the models (2.51 crashes when its exit timeout expires with requests in flight).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

from ..settings import DRAIN_FILE_ENV

ABORT_SUFFIX = ".abort"
POLL_SECONDS = 0.1


def _flag(suffix: str = "") -> bool:
    path = os.environ.get(DRAIN_FILE_ENV)
    return bool(path) and os.path.exists(path + suffix)


def draining() -> bool:
    return _flag()


def aborting() -> bool:
    return _flag(ABORT_SUFFIX)


def watch_abort(on_abort: Callable[[], None], name: str) -> None:
    """Call `on_abort()` once, from a daemon thread, when serve.py asks to abort (no thread
    when the server was not started by serve.py)."""
    if not os.environ.get(DRAIN_FILE_ENV):
        return
    def run() -> None:
        while not aborting():
            time.sleep(POLL_SECONDS)
        on_abort()

    threading.Thread(target=run, name=f"{name}-abort-watch", daemon=True).start()
