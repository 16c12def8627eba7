"""Saturation soak: drive one model at and above its saturation point for a while, count every
failure, report latency percentiles, and sample the server's memory to see that it does not grow.

    .venv/bin/python perf/saturation.py --url localhost:8001 [--protocol grpc|http]
        [--model audio_tokenizer] [--inputs audio_tokenizer] [--seconds 600] [--clip-seconds 3]
        [--concurrency N | --ramp 1,2,4,8,16 --ramp-seconds 5 --overload 2]
        [--max-requests N] [--timeout-s 120] [--sample-every 5] [--max-growth-pct 10] [--json OUT]

Phases. Unless --concurrency is given, a ramp runs each --ramp level for --ramp-seconds and takes
the saturation concurrency as the level of highest throughput (the ramp stops at the first level
that gains less than 10 %). The main phase then keeps --overload × that many requests in flight
(closed loop: each client sends its next request when the previous one is answered) for the rest
of --seconds, or until --max-requests. Loopback servers only: the script refuses other hosts.

Memory: every --sample-every seconds, the proportional set size (PSS, /proc/PID/smaps_rollup) of
the tritonserver serving that port plus all its descendants (the Python backend stubs). Growth =
mean of the last quarter of the main phase's samples over the mean of its second quarter, minus 1
(the first quarter is warm-up).

Verdict (exit code 0 / 1): no failed request in any phase and growth below --max-growth-pct.
Inputs come from a builder chosen by name (`INPUT_BUILDERS`: model → function(clip_seconds) →
list of requests, sent round-robin): `audio_tokenizer` (speech clips) and `clone` (a speech
prompt with its transcript, a target text and max_new_tokens), e.g.

    .venv/bin/python perf/saturation.py --url localhost:8001 --model clone --clip-seconds 3
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import math
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the project's packages
    sys.path.insert(0, str(ROOT))

Request = dict[str, np.ndarray]
GAIN = 0.10  # a ramp level must add this much throughput to count as below saturation


# --------------------------------------------------------------------------- inputs

def tokenizer_inputs(clip_seconds: float, count: int = 4) -> list[Request]:
    """`count` espeak-ng utterances as the audio_tokenizer ensemble takes them."""
    from perf.perf_inputs import model_arrays, speech_clips

    return [{name: array[None] for name, array in model_arrays("audio_tokenizer", clip).items()}
            for clip in speech_clips(clip_seconds, count)]


CLONE_TEXTS = ("Hello, this is a cloned voice.", "The quick brown fox jumps over the lazy dog.",
               "One more sentence, spoken in the voice of the prompt.")
CLONE_MAX_NEW_TOKENS = (31, 46, 61)  # the synthetic LLM stops only at a length limit
CLONE_SEED_BASE = 2000  # espeak seeds apart from the tokenizer's perf clips (1000+)


def clone_inputs(clip_seconds: float, count: int = 4) -> list[Request]:
    """`count` clone requests: an espeak-ng utterance with its transcript as the voice prompt,
    a target text and max_new_tokens (every request sets it: an LLM that never emits EOT would
    otherwise generate up to max_length), round-robin over CLONE_TEXTS / CLONE_MAX_NEW_TOKENS.
    Different voices: the first round fills the prompt cache, the rest hit it."""
    from build_scripts.espeak_clips import speech_with_transcript

    requests = []
    for i in range(count):
        audio, rate, transcript = speech_with_transcript(clip_seconds, seed=CLONE_SEED_BASE + i)
        requests.append({
            "waveform": np.ascontiguousarray(audio, np.float32)[None],
            "sample_rate": np.array([[rate]], np.int32), "channels": np.array([[1]], np.int32),
            "prompt_text": np.array([[transcript.encode("utf-8")]], np.object_),
            "target_text": np.array([[CLONE_TEXTS[i % len(CLONE_TEXTS)].encode("utf-8")]], np.object_),
            "max_new_tokens": np.array([[CLONE_MAX_NEW_TOKENS[i % len(CLONE_MAX_NEW_TOKENS)]]], np.int32),
            "seed": np.array([[i]], np.int64)})
    return requests


INPUT_BUILDERS: dict[str, Callable[[float], list[Request]]] = {"audio_tokenizer": tokenizer_inputs,
                                                               "clone": clone_inputs}


# --------------------------------------------------------------------------- the server

def loopback_only(url: str) -> None:
    """Load goes to this machine only."""
    host = url.rsplit(":", 1)[0].strip("[]")
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise SystemExit(f"saturation: {url} is not a loopback address; this load generator "
                         "only drives a server on this machine")


def _processes() -> list[tuple[int, int, list[str]]]:
    """(pid, parent pid, argv) of every process."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, IndexError, ValueError):
            continue
        out.append((int(proc.name), parent, argv))
    return out


def find_server(port: int) -> int:
    """The pid of the tritonserver listening on `port` (gRPC or metrics; an HTTP port that
    serve.py's HTTP guard holds names no tritonserver: pass --server-pid then)."""
    flags = (f"--grpc-port={port}", f"--http-port={port}", f"--metrics-port={port}")
    found = [pid for pid, _, argv in _processes()
             if argv and argv[0].endswith("tritonserver") and any(f in argv for f in flags)]
    if len(found) != 1:
        raise SystemExit(f"saturation: found {len(found)} tritonserver processes for port {port}; "
                         "pass --server-pid")
    return found[0]


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, parent, _ in _processes():
        children.setdefault(parent, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def memory_kib(pid: int) -> int:
    """PSS (shared pages split between their users), else RSS; 0 for a process that is gone."""
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1])
        except OSError:
            continue
    return 0


def server_memory_mib(root: int) -> float:
    return sum(memory_kib(pid) for pid in process_tree(root)) / 1024


def growth_pct(samples: list[float]) -> float | None:
    """(mean of the last quarter / mean of the second quarter − 1) × 100; None under 8 samples
    or when the server was gone (0 MiB) in the second quarter."""
    if len(samples) < 8:
        return None
    q = len(samples) // 4
    second, last = statistics.fmean(samples[q:2 * q]), statistics.fmean(samples[-q:])
    return (last / second - 1) * 100 if second > 0 else None


# --------------------------------------------------------------------------- load

@dataclasses.dataclass
class Phase:
    concurrency: int
    seconds: float = 0.0
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    failures: Counter = dataclasses.field(default_factory=Counter)

    @property
    def count(self) -> int:
        return len(self.latencies_ms) + sum(self.failures.values())

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    def summary(self) -> dict:
        return {"concurrency": self.concurrency, "seconds": round(self.seconds, 2),
                "requests": self.count, "failed": sum(self.failures.values()),
                "throughput_infer_s": round(self.throughput, 3),
                **{f"p{q}_ms": _round(self.percentile(q)) for q in (50, 90, 99)},
                "max_ms": _round(max(self.latencies_ms, default=None)),
                "failures": dict(self.failures)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class Driver:
    """Closed-loop clients of one model: each thread has its own client and sends the requests
    round-robin, one at a time."""

    def __init__(self, url: str, protocol: str, model: str, requests: list[Request],
                 timeout_s: float = 120.0):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be grpc or http, not '{protocol}'")
        self.url, self.protocol, self.model = url, protocol, model
        self.requests, self.timeout_s = requests, timeout_s
        self.sent = 0
        self._lock = threading.Lock()

    def _client(self):
        if self.protocol == "grpc":
            import tritonclient.grpc as tc

            return tc, tc.InferenceServerClient(self.url)
        import tritonclient.http as tc

        return tc, tc.InferenceServerClient(self.url, connection_timeout=self.timeout_s,
                                            network_timeout=self.timeout_s)

    def _infer(self, tc, client, request: Request) -> None:
        from tritonclient.utils import np_to_triton_dtype

        inputs = []
        for name, array in request.items():
            tensor = tc.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            if self.protocol == "http":
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        if self.protocol == "grpc":
            client.infer(self.model, inputs, client_timeout=self.timeout_s)
        else:
            client.infer(self.model, inputs)

    def _take(self, limit: int) -> int | None:
        with self._lock:
            if self.sent >= limit:
                return None
            self.sent += 1
            return self.sent

    def run(self, concurrency: int, seconds: float, max_requests: int) -> Phase:
        """`concurrency` clients until `seconds` pass or `max_requests` (over all phases) are sent."""
        phase = Phase(concurrency)
        deadline = time.monotonic() + seconds
        record = threading.Lock()

        def client_loop() -> None:
            tc, client = self._client()
            try:
                while time.monotonic() < deadline:
                    n = self._take(max_requests)
                    if n is None:
                        return
                    start = time.perf_counter()
                    try:
                        self._infer(tc, client, self.requests[n % len(self.requests)])
                        with record:
                            phase.latencies_ms.append((time.perf_counter() - start) * 1000)
                    except Exception as exc:  # noqa: BLE001 - every failure is counted by its text
                        text = exc.message() if hasattr(exc, "message") else str(exc)
                        with record:
                            phase.failures[f"{type(exc).__name__}: {text}"] += 1
            finally:
                client.close()

        began = time.monotonic()
        threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        phase.seconds = time.monotonic() - began
        return phase


class MemorySampler:
    """(seconds since start, MiB) of the server's process tree, every `every` seconds."""

    def __init__(self, server_pid: int, every: float):
        self.server_pid, self.every = server_pid, every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        while True:
            self.samples.append((round(time.monotonic() - self._t0, 2),
                                 round(server_memory_mib(self.server_pid), 1)))
            if self._stop.wait(self.every):
                return

    def mark(self) -> float:
        return time.monotonic() - self._t0

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- the run

@dataclasses.dataclass
class Report:
    model: str
    protocol: str
    ramp: list[Phase]
    saturation_concurrency: int
    main: Phase
    memory: list[tuple[float, float]]  # main phase only
    growth_pct: float | None
    max_growth_pct: float

    @property
    def failed(self) -> int:
        return sum(sum(p.failures.values()) for p in self.ramp + [self.main])

    @property
    def passed(self) -> bool:
        return (self.failed == 0 and self.main.count > 0 and self.growth_pct is not None
                and self.growth_pct < self.max_growth_pct)

    def to_json(self) -> dict:
        return {"model": self.model, "protocol": self.protocol, "passed": self.passed,
                "failed": self.failed, "saturation_concurrency": self.saturation_concurrency,
                "ramp": [p.summary() for p in self.ramp], "main": self.main.summary(),
                "memory_mib": self.memory, "memory_growth_pct": _round(self.growth_pct),
                "max_growth_pct": self.max_growth_pct}


def find_saturation(driver: Driver, levels: list[int], seconds: float, max_requests: int
                    ) -> tuple[int, list[Phase]]:
    """The ramp: the level with the highest throughput, stopping once a level gains < GAIN."""
    phases: list[Phase] = []
    best = None
    for level in levels:
        phase = driver.run(level, seconds, max_requests)
        phases.append(phase)
        if best is not None and phase.throughput < best.throughput * (1 + GAIN):
            break
        best = phase if best is None or phase.throughput > best.throughput else best
    return best.concurrency, phases


def saturate(url: str, protocol: str = "grpc", model: str = "audio_tokenizer",
             requests: list[Request] | None = None, seconds: float = 600.0,
             concurrency: int | None = None, ramp: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
             ramp_seconds: float = 5.0, overload: float = 2.0, max_requests: int = 10**6,
             timeout_s: float = 120.0, sample_every: float = 5.0, max_growth_pct: float = 10.0,
             server_pid: int | None = None) -> Report:
    """The whole run within `seconds` (the ramp included), as a Report."""
    loopback_only(url)
    if requests is None:
        requests = INPUT_BUILDERS[model](3.0)
    server_pid = server_pid or find_server(int(url.rsplit(":", 1)[1]))
    driver = Driver(url, protocol, model, requests, timeout_s)
    began = time.monotonic()
    with MemorySampler(server_pid, sample_every) as memory:
        phases: list[Phase] = []
        if concurrency is None:
            saturation, phases = find_saturation(driver, list(ramp), ramp_seconds, max_requests)
            concurrency = max(1, math.ceil(overload * saturation))
        else:
            saturation = concurrency
        main_from = memory.mark()
        main = driver.run(concurrency, max(0.0, seconds - (time.monotonic() - began)), max_requests)
    samples = [s for s in memory.samples if s[0] >= main_from]
    return Report(model, protocol, phases, saturation, main, samples,
                  growth_pct([mib for _, mib in samples]), max_growth_pct)


def print_report(report: Report, out=sys.stdout) -> None:
    for name, phase in [(f"ramp c={p.concurrency}", p) for p in report.ramp] + [("main", report.main)]:
        s = phase.summary()
        print(f"{name:>12}: c={s['concurrency']:<3} {s['requests']:>7} requests "
              f"{s['failed']:>4} failed {s['throughput_infer_s']:>8.2f}/s  p50 {s['p50_ms']} ms  "
              f"p90 {s['p90_ms']} ms  p99 {s['p99_ms']} ms  max {s['max_ms']} ms", file=out)
        for failure, n in phase.failures.most_common(5):
            print(f"{'':>14}{n} × {failure}", file=out)
    mib = [m for _, m in report.memory]
    if mib:
        print(f"      memory: {len(mib)} samples, {mib[0]:.0f} → {mib[-1]:.0f} MiB "
              f"(min {min(mib):.0f}, max {max(mib):.0f}); growth {_round(report.growth_pct)} % "
              f"(limit {report.max_growth_pct:g} %)", file=out)
    print(f"saturation at concurrency {report.saturation_concurrency}; "
          f"{'PASS' if report.passed else 'FAIL'}", file=out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="host:port of a loopback tritonserver")
    ap.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    ap.add_argument("--model", default="audio_tokenizer")
    ap.add_argument("--inputs", default=None, choices=sorted(INPUT_BUILDERS),
                    help="input builder (default: the model's)")
    ap.add_argument("--clip-seconds", type=float, default=3.0)
    ap.add_argument("--seconds", type=float, default=600.0, help="whole run, ramp included")
    ap.add_argument("--concurrency", type=int, default=None, help="skip the ramp; main phase only")
    ap.add_argument("--ramp", default="1,2,4,8,16,32")
    ap.add_argument("--ramp-seconds", type=float, default=5.0)
    ap.add_argument("--overload", type=float, default=2.0,
                    help="main-phase concurrency as a multiple of the saturation concurrency")
    ap.add_argument("--max-requests", type=int, default=10**6)
    ap.add_argument("--timeout-s", type=float, default=120.0, help="client-side deadline per request")
    ap.add_argument("--sample-every", type=float, default=5.0)
    ap.add_argument("--max-growth-pct", type=float, default=10.0)
    ap.add_argument("--server-pid", type=int, default=None,
                    help="tritonserver's pid (default: found by the port in --url)")
    ap.add_argument("--json", type=Path, default=None, help="write the report as JSON")
    args = ap.parse_args(argv)
    requests = INPUT_BUILDERS[args.inputs or args.model](args.clip_seconds)
    report = saturate(args.url, args.protocol, args.model, requests, args.seconds,
                      args.concurrency, tuple(int(c) for c in args.ramp.split(",")),
                      args.ramp_seconds, args.overload, args.max_requests, args.timeout_s,
                      args.sample_every, args.max_growth_pct, args.server_pid)
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
