"""Start `tritonserver` on a model repository and keep it running until SIGINT/SIGTERM.

    python build_scripts/serve.py --repo REPO [--http-port 0] [--grpc-port 0] [--metrics-port 0]
        [--address 0.0.0.0] [--log-file F] [--tritonserver PATH] [--drain-seconds 30]

Port 0 picks a free port. Once `/v2/health/ready` answers, one JSON line is printed:
{"http_port": ..., "grpc_port": ..., "metrics_port": ..., "log_file": ...}. The server's own log
goes to the log file (a temporary one unless --log-file); when startup fails its tail is shown.

By default the CPU `tritonserver` 2.51 shipped in the `nvidia-pytriton` wheel is used. Its Python
backend's stub embeds Python in isolated mode (PYTHONPATH is ignored) and finds its packages
through the first `python3` on PATH, so the running virtualenv's `bin/` is put first on PATH and
the libpython of that virtualenv's interpreter first on LD_LIBRARY_PATH. The model configs carry
the project root for `python_backends` (see build_repository.py).

Stopping (Ctrl-C, SIGTERM, `stop()`) drains first: the entry-point models (clone, clone_stream,
llm) answer new requests UNAVAILABLE while the ones in flight finish, for at most
`--drain-seconds` (our in-flight metrics, read from the metrics port, say when none is left);
then tritonserver is stopped, and what is still open is answered UNAVAILABLE as the models
unload. Whatever happened (a crash included), no process of the server (its Python backend
stubs) and no shared-memory region of it is left behind.

HTTP clients reach tritonserver through build_scripts/http_guard.py (unless --no-http-guard):
2.51 allocates whatever an HTTP/JSON request declares, so one 150-byte request with a huge
shape would abort it; the guard refuses such requests (400) and forwards the rest unchanged to
tritonserver's HTTP port on 127.0.0.1. gRPC is not proxied (its frontend checks sizes itself).
When tritonserver is started here, it is told to stop (SIGTERM) should this process die.

As a library: `with TritonServer(repo) as server: ... server.grpc_url ...`.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from build_scripts.http_guard import GuardThread
from python_backends.serving.shutdown import ABORT_SUFFIX
from python_backends.settings import DRAIN_FILE_ENV

# what the in-flight metrics of our models are called (python_backends/serving/metrics.py)
IN_FLIGHT_METRICS = ("step_audio_requests_in_flight", "step_audio_llm_sequences")
SHM_DIR = Path("/dev/shm")
ABORT_SECONDS = 5.0  # after the drain: for the aborted requests' answers to be sent
MIB = 1 << 20
PR_SET_PDEATHSIG = 1
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork


def _stop_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies."""
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


class ServerStartError(RuntimeError):
    """tritonserver did not become ready; the message ends with the tail of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def pytriton_dist() -> Path:
    """The `tritonserver` folder of the installed nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError("the nvidia-pytriton package (which ships tritonserver) is not "
                               "installed in this Python; run build_scripts/setup_env.sh")
    return Path(list(spec.submodule_search_locations)[0]) / "tritonserver"


def _python_backend_dir(dist: Path, into: Path) -> Path:
    """A backend directory whose python backend has the stub for this interpreter's version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerStartError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    python = into / "python"
    python.mkdir(parents=True)
    for src in (dist / "backends" / "python").iterdir():
        if src.is_file():
            (python / src.name).symlink_to(src)
    (python / stub.name).symlink_to(stub)
    return into


def server_environment(extra_libs: list[Path]) -> dict[str, str]:
    env = dict(os.environ)
    libs = [str(p) for p in extra_libs]
    libpython = Path(sys.base_prefix) / "lib" / (
        f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0")
    if libpython.is_file():  # the stub then runs exactly the interpreter the virtualenv was made from
        libs.insert(0, str(libpython.parent))
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


# error lines every CPU-only start prints; not worth showing
_HARMLESS = ("CUDA driver", "CudaDriverHelper", "NVML", "DCGM")


def log_tail(path: Path | None, lines: int = 30) -> str:
    """The server's error lines (models that failed to load, ...) and the last `lines` lines."""
    if path is None or not path.is_file():
        return "(no server log)"
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    # drop the borders and filler of the big option/model tables Triton prints
    text = [line for line in text if line.strip() and not line.startswith(("+--", "|  "))]
    tail = text[-lines:]
    errors = [line for line in text[:-lines]
              if (re.match(r"E\d{4} ", line) or "UNAVAILABLE" in line)
              and not any(h in line for h in _HARMLESS)]
    head = ["errors:", *errors[-20:], "last lines:"] if errors else []
    return "\n".join(head + tail)


class TritonServer:
    """One tritonserver process on `repo`; ports 0 are replaced by free ones at start()."""

    def __init__(self, repo: str | Path, http_port: int = 0, grpc_port: int = 0,
                 metrics_port: int = 0, address: str = "0.0.0.0", log_file: str | Path | None = None,
                 tritonserver: str | Path | None = None, startup_timeout: float = 600.0,
                 extra_args: tuple[str, ...] = (), drain_seconds: float = 30.0,
                 exit_timeout_seconds: int = 10, http_guard: bool = True,
                 max_input_mib: int = 256, max_body_mib: int = 512):
        self.repo = Path(repo).resolve()
        self.requested_ports = (http_port, grpc_port, metrics_port)
        self.address = address
        self.log_file = Path(log_file).resolve() if log_file else None
        self.tritonserver = Path(tritonserver) if tritonserver else None
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.drain_seconds = drain_seconds
        self.http_guard = http_guard
        self.max_input_bytes, self.max_body_bytes = max_input_mib * MIB, max_body_mib * MIB
        self._guard: GuardThread | None = None
        self._triton_http_port = 0  # where tritonserver's own HTTP listens (behind the guard)
        self.exit_timeout_seconds = exit_timeout_seconds
        # names every shared-memory region and stub of this server (their command lines carry it)
        self.shm_prefix = f"sa{uuid.uuid4().hex[:12]}_"
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.process: subprocess.Popen | None = None
        self._tmp: Path | None = None
        self._own_log = False

    # ----------------------------------------------------------------- addresses
    @property
    def host(self) -> str:
        """Where a client on this machine reaches the server."""
        return "localhost" if self.address in ("0.0.0.0", "127.0.0.1", "") else self.address

    @property
    def http_url(self) -> str:
        """host:port, as tritonclient.http expects it."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def ports(self) -> dict:
        return {"http_port": self.http_port, "grpc_port": self.grpc_port,
                "metrics_port": self.metrics_port, "log_file": str(self.log_file),
                "shm_prefix": self.shm_prefix}

    # ----------------------------------------------------------------- lifecycle
    def _command(self, backends: Path | None) -> list[str]:
        if self.tritonserver:
            binary = str(self.tritonserver)
        else:
            binary = str(pytriton_dist() / "bin" / "tritonserver")
        cmd = [binary, f"--model-repository={self.repo}",
               f"--http-port={self._triton_http_port}", f"--grpc-port={self.grpc_port}",
               f"--metrics-port={self.metrics_port}",
               f"--http-address={'127.0.0.1' if self.http_guard else self.address}",
               f"--grpc-address={self.address}",
               "--disable-auto-complete-config", f"--exit-timeout-secs={self.exit_timeout_seconds}",
               # unique shared-memory names, so several servers can run side by side
               f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}"]
        if backends is not None:
            cmd.append(f"--backend-directory={backends}")
        return cmd + list(self.extra_args)

    def start(self) -> "TritonServer":
        if self.process is not None:
            raise RuntimeError("server already started")
        if not (self.repo / "audio_tokenizer").is_dir() and not any(self.repo.glob("*/config.pbtxt")):
            raise ServerStartError(f"{self.repo} holds no model configs; build it with "
                                   "build_scripts/build_repository.py")
        self._tmp = Path(tempfile.mkdtemp(prefix="tritonserver-"))
        if self.log_file is None:
            self.log_file = self._tmp / "tritonserver.log"
            self._own_log = True
        libs: list[Path] = []
        backends = None
        if self.tritonserver is None:
            dist = pytriton_dist()
            libs.append(dist.parents[1] / "nvidia_pytriton.libs")
            backends = _python_backend_dir(dist, self._tmp / "backends")
        env = server_environment(libs)
        env[DRAIN_FILE_ENV] = str(self.drain_file)
        attempts = 3 if 0 in self.requested_ports else 1
        for attempt in range(attempts):
            self.http_port, self.grpc_port, self.metrics_port = (
                p or free_port() for p in self.requested_ports)
            self._triton_http_port = free_port() if self.http_guard else self.http_port
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            with open(self.log_file, "ab") as log:
                self.process = subprocess.Popen(self._command(backends), stdout=log,
                                                stderr=subprocess.STDOUT, env=env,
                                                stdin=subprocess.DEVNULL, start_new_session=True,
                                                preexec_fn=_stop_with_parent)
            try:
                self._wait_ready()
                if self.http_guard:
                    self._start_guard()
                return self
            except ServerStartError as exc:
                self._terminate()
                in_use = "already in use" in log_tail(self.log_file, 200)
                if attempt + 1 < attempts and in_use:
                    continue
                self._cleanup(keep_log=True)
                raise exc

    def _wait_ready(self) -> None:
        url = f"http://127.0.0.1:{self._triton_http_port}/v2/health/ready"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(f"tritonserver exited with code {code} during startup; "
                                       f"log {self.log_file}:\n{log_tail(self.log_file)}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, OSError):
                with urllib.request.urlopen(url, timeout=2) as reply:
                    # ours, not another server that held the free port we picked
                    if reply.status == 200 and self._listening():
                        return
            time.sleep(0.25)
        raise ServerStartError(f"tritonserver not ready after {self.startup_timeout:.0f} s; "
                               f"log {self.log_file}:\n{log_tail(self.log_file)}")

    def _listening(self) -> bool:
        """Our process's log (from where it started) says its HTTP service is up."""
        with open(self.log_file, "rb") as log:
            log.seek(self._log_offset)
            return b"Started HTTPService at" in log.read()

    def _start_guard(self) -> None:
        requested = self.requested_ports[0]
        try:
            self._guard = GuardThread(self.address, requested, self._triton_http_port,
                                      self.max_input_bytes, self.max_body_bytes).start()
        except OSError as exc:
            raise ServerStartError(f"the HTTP guard cannot listen on {self.address}:{requested}: "
                                   f"{exc}") from exc
        self.http_port = self._guard.port

    @property
    def triton_http_port(self) -> int:
        """tritonserver's own HTTP port (on 127.0.0.1, behind the guard when there is one)."""
        return self._triton_http_port

    @property
    def drain_file(self) -> Path:
        return self._tmp / "draining"

    def in_flight(self) -> float | None:
        """Requests our models hold (IN_FLIGHT_METRICS summed over models), None when the
        metrics port does not answer."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2) as reply:
                text = reply.read().decode()
        except (urllib.error.URLError, ConnectionError, OSError):
            return None
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(IN_FLIGHT_METRICS))

    def _wait_idle(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.process.poll() is None:
            if self.in_flight() in (0.0, None):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def drain(self) -> bool:
        """New work to the entry points is refused; wait (at most drain_seconds) until none is
        in flight. True if it came to that; else what is left is answered UNAVAILABLE and the
        LLM stops (python_backends/serving/shutdown.py), and False."""
        if self.process is None or self.process.poll() is not None:
            return True
        self.drain_file.touch()
        if self._wait_idle(self.drain_seconds):
            return True
        Path(f"{self.drain_file}{ABORT_SUFFIX}").touch()
        self._wait_idle(ABORT_SECONDS)
        return False

    def _terminate(self, timeout: float = 30.0, graceful: bool = True) -> int | None:
        proc, self.process = self.process, None
        if proc is None:
            return None
        if proc.poll() is None:
            if graceful:
                proc.send_signal(signal.SIGINT)  # unloads models, stops the stubs
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout)
            with contextlib.suppress(ProcessLookupError):
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._reap(proc.pid)
        if self._guard is not None:
            self._guard.stop()
            self._guard = None
        return proc.returncode

    def leftovers(self) -> tuple[list[int], list[Path]]:
        """(pids, shared-memory files) of this server still present."""
        mark = self.shm_prefix.encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if mark in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
        return pids, sorted(SHM_DIR.glob(f"{self.shm_prefix}*"))

    def _reap(self, pgid: int) -> None:
        """Kill what outlived tritonserver (stubs of a crashed server live on under PID 1 and
        ignore SIGTERM) and remove its shared memory."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        for _ in range(50):
            pids, regions = self.leftovers()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            for region in regions:
                region.unlink(missing_ok=True)
            if not pids:
                return
            time.sleep(0.1)

    def _cleanup(self, keep_log: bool) -> None:
        if self._tmp is None:
            return
        if keep_log and self._own_log:
            shutil.rmtree(self._tmp / "backends", ignore_errors=True)
        else:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None

    def stop(self, drain: bool = True) -> int | None:
        """Drain (unless `drain` is False), stop the server (SIGINT, then SIGKILL after
        exit_timeout + 10 s) and reap what it leaves; returns its exit code (0 after a drain
        that ran out of time: everyone was answered, and tritonserver is killed at once, since
        2.51 does not unload a model whose requests were answered from another thread while
        their workers still ran)."""
        if drain and not self.drain():
            self._terminate(graceful=False)
            self._cleanup(keep_log=False)
            return 0
        code = self._terminate(self.exit_timeout_seconds + 10.0)
        self._cleanup(keep_log=bool(code))
        return code

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", required=True, help="model repository (build_repository.py --out)")
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--metrics-port", type=int, default=0)
    parser.add_argument("--address", default="0.0.0.0", help="address the HTTP/gRPC servers bind")
    parser.add_argument("--log-file", default=None, help="server log (default: a temporary file)")
    parser.add_argument("--tritonserver", default=None,
                        help="a tritonserver binary with its own backends (default: nvidia-pytriton's)")
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--no-http-guard", action="store_true",
                        help="let HTTP clients reach tritonserver directly (2.51 then aborts on an "
                             "HTTP/JSON request that declares a huge shape)")
    parser.add_argument("--max-input-mib", type=int, default=256,
                        help="HTTP guard: the largest input a request may declare")
    parser.add_argument("--max-body-mib", type=int, default=512,
                        help="HTTP guard: the largest request body")
    parser.add_argument("--drain-seconds", type=float, default=30.0,
                        help="at stop: how long requests in flight may take to finish (new ones "
                             "are answered UNAVAILABLE meanwhile)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = TritonServer(args.repo, args.http_port, args.grpc_port, args.metrics_port,
                          address=args.address, log_file=args.log_file,
                          tritonserver=args.tritonserver, startup_timeout=args.startup_timeout,
                          drain_seconds=args.drain_seconds, http_guard=not args.no_http_guard,
                          max_input_mib=args.max_input_mib, max_body_mib=args.max_body_mib)
    try:
        server.start()
    except ServerStartError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(server.ports()), flush=True)
    while not stop.wait(0.5):
        if not server.running():
            print(f"serve: tritonserver exited unexpectedly; log {server.log_file}:\n"
                  f"{log_tail(server.log_file)}", file=sys.stderr)
            server.stop(drain=False)
            return 1
    code = server.stop()
    return 0 if code in (0, None) else 1


if __name__ == "__main__":
    sys.exit(main())
