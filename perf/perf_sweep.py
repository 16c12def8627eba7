"""perf_analyzer sweep of the audio tokenizer: throughput and latency against concurrency, per model,
protocol and clip length, with the per-model time breakdown from Triton's statistics.

Against a running server (any host):
    .venv/bin/python perf/perf_sweep.py --url localhost:8001 --protocol grpc \\
        --models audio_tokenizer,vq02 --concurrency 1,2,4,8 --clip-seconds 3,10 --out perf/results/x
    .venv/bin/python perf/perf_sweep.py --url myhost --protocol both      # ports 8001 and 8000
    .venv/bin/python perf/perf_sweep.py --grpc-url h:9001 --http-url h:9000 --protocol both

Or it builds a repository and starts its own tritonserver, once per combination of repository
options (comma lists; `;` separates alternatives of --instances and --preferred-batch-sizes):
    .venv/bin/python perf/perf_sweep.py --preset full --queue-delay-us 0,2000,20000 \\
        --instances 'vq02=1;vq02=2' --concurrency 8 --clip-seconds 10 --out perf/results/knobs

Writes OUT.csv (one row per label, model, protocol, clip length and concurrency; appended as each
run ends), OUT_throughput.png, OUT_latency.png, OUT.json (command, machine, server configs), and
prints a compact table. `--replot OUT.csv` remakes the plots and the table from a CSV.

Each point is one bounded perf_analyzer run: time windows (contiguous; the first includes the
ramp-up to the concurrency), at most `--max-trials` of them, and a subprocess timeout. Window
length: at least `--measurement-interval`, `--window-latencies` predicted latencies (batches
complete in bursts) and room for `--window-completions` requests, at most `--max-window-ms`;
the latency is predicted from the previous concurrency's, or first from one request per clip
(sent before the runs: it also checks the inputs and warms the server). By default
perf_analyzer's stability rule only demands completions in each of the last 3 windows; their
throughput spread is written to the CSV (`spread_pct`) instead. If perf_analyzer still gives
up, the point is measured once more with doubled windows (`attempts` = 2).

Triton's statistics are read before and after each run; their difference (which includes the
ramp-up and every window) gives each member model's mean queue and compute time per request,
average batch size (inferences / executions) and utilisation (busy time / wall time of the
run, summed over instances). `loadavg_1m` shows how busy the machine was (this sweep included).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import itertools
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

from perf.perf_inputs import (MEMBERS, MODELS, TRITON_DTYPES, Clip, input_data,
                              model_arrays, speech_clips, write_input_data)

ROOT = Path(__file__).resolve().parents[1]
ENSEMBLE = "audio_tokenizer"
PROTOCOLS = ("grpc", "http")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
DEFAULTS = dict(models="audio_tokenizer", concurrency="1,2,4,8,16,32,64", clip_seconds="3,10,30",
                clips_per_length=4, measurement_interval=2000, max_trials=4, stability=1000.0,
                window_latencies=1.5, window_completions=6, max_window_ms=30000)
QUICK = dict(models="audio_tokenizer", concurrency="1,2", clip_seconds="3", clips_per_length=1,
             measurement_interval=1000, max_trials=3, stability=1000.0, window_latencies=1.5,
             window_completions=6, max_window_ms=5000)
NO_STABILITY_RULE = 100000.0  # perf_analyzer --stability-percentage that accepts any spread
UNSTABLE = "Failed to obtain stable measurement"
NO_REQUESTS = "No valid requests recorded"

ID_COLUMNS = ["label", "weights", "model", "protocol", "clip_s", "concurrency"]
CONFIG_COLUMNS = ["max_batch_size", "queue_delay_us", "preferred_batch_sizes", "instances",
                  "num_threads"]
RESULT_COLUMNS = ["throughput_infer_s", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "avg_ms",
                  "measured_requests", "window_ms", "windows", "spread_pct", "attempts", "wall_s",
                  "loadavg_1m"]
SERVER_COLUMNS = ["server_requests", "server_failed", "server_request_ms"]
MEMBER_FIELDS = ["queue_ms", "compute_ms", "avg_batch", "util"]
MEMBER_COLUMNS = [f"{m}_{f}" for m in MEMBERS for f in MEMBER_FIELDS]
COLUMNS = ID_COLUMNS + CONFIG_COLUMNS + RESULT_COLUMNS + SERVER_COLUMNS + MEMBER_COLUMNS + ["error"]


class SweepError(RuntimeError):
    pass


# ============================================================================ arguments

def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise SweepError(f"'{text}' is not a comma-separated list of integers") from None
    if not values:
        raise SweepError("empty list")
    return values


def float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise SweepError(f"'{text}' is not a comma-separated list of numbers") from None
    if not values or any(v <= 0 for v in values):
        raise SweepError(f"'{text}': clip lengths must be > 0")
    return values


def model_list(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise SweepError(f"unknown model(s) {', '.join(bad) or '(none)'}; choose from {', '.join(MODELS)}")
    return models


def split_host_port(url: str) -> tuple[str, int | None]:
    url = re.sub(r"^[a-z]+://", "", url.strip()).rstrip("/")
    host, sep, port = url.rpartition(":")
    if sep and port.isdigit() and host and not host.endswith(":"):
        return host, int(port)
    return url, None


def resolve_urls(protocol: str, url: str | None = None, grpc_url: str | None = None,
                 http_url: str | None = None) -> dict[str, str]:
    """{protocol: host:port} for the protocols to measure. `url` without a port means Triton's
    default ports (gRPC 8001, HTTP 8000); with a port it names one protocol's endpoint."""
    protocols = list(PROTOCOLS) if protocol == "both" else [protocol]
    explicit = {"grpc": grpc_url, "http": http_url}
    urls = {}
    for p in protocols:
        if explicit[p]:
            urls[p] = explicit[p]
            continue
        if not url:
            raise SweepError(f"no address for {p}: give --url or --{p}-url")
        host, port = split_host_port(url)
        if port is None:
            urls[p] = f"{host}:{DEFAULT_PORTS[p]}"
        elif len(protocols) == 1:
            urls[p] = f"{host}:{port}"
        else:
            raise SweepError(f"--url {url} names one port but --protocol both needs two: give "
                             "--url HOST (default ports) or --grpc-url and --http-url")
    return urls


def alternatives(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(";")] or [""]


def parse_preferred(text: str) -> tuple[int, ...]:
    text = text.strip().lower()
    if text in ("", "none", "-"):
        return ()
    sizes = tuple(int_list(text))
    if any(s < 1 for s in sizes):
        raise SweepError(f"preferred batch sizes must be >= 1: '{text}'")
    return sizes


# ============================================================================ perf_analyzer

def perf_analyzer_binary(explicit: str | None = None) -> str:
    for candidate in (explicit, Path(sys.executable).parent / "perf_analyzer",
                      shutil.which("perf_analyzer")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise SweepError("perf_analyzer not found: it comes with the tritonclient wheel in .venv/bin "
                     "(or pass --perf-analyzer PATH)")


def perf_analyzer_env() -> dict[str, str]:
    """perf_analyzer links libcudart even for CPU-only runs; the nvidia-cuda-runtime wheel has it."""
    env = dict(os.environ)
    lib = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cuda_runtime" / "lib"
    if lib.is_dir():
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH")]))
    return env


def perf_analyzer_command(binary: str, model: str, protocol: str, url: str, data: Path,
                          concurrency: int, window_ms: int, max_trials: int, stability: float,
                          csv_path: Path) -> list[str]:
    return [binary, "-v", "-m", model, "-i", protocol, "-u", url, "-b", "1",
            "--input-data", str(data),
            # an explicit end keeps synchronous mode at one thread per concurrent request
            "--concurrency-range", f"{concurrency}:{concurrency}:1",
            "--max-threads", str(max(16, concurrency)),
            "--measurement-mode", "time_windows", "--measurement-interval", str(window_ms),
            "--max-trials", str(max_trials), "--stability-percentage", f"{stability:g}",
            "-f", str(csv_path)]


def parse_perf_csv(path: Path) -> dict:
    """perf_analyzer's -f CSV (latencies in µs) → throughput and percentiles in ms."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise SweepError(f"{path}: perf_analyzer wrote no result row")
    row = rows[-1]
    out = {"throughput_infer_s": float(row["Inferences/Second"])}
    for p in (50, 90, 95, 99):
        out[f"p{p}_ms"] = float(row[f"p{p} latency"]) / 1000.0
    return out


def parse_perf_stdout(text: str) -> dict:
    """From perf_analyzer -v: the client section's average latency and request count (the first
    of each in the log), the number of windows, and the throughput spread of the last 3 windows
    (the ones perf_analyzer merges into its result): (max / min - 1) in %."""
    out = {}
    passes = [float(v) for v in re.findall(r"Pass \[\d+\] throughput: ([0-9.eE+-]+) infer/sec", text)]
    if passes:
        out["windows"] = len(passes)
        last = passes[-3:]
        out["spread_pct"] = (max(last) / min(last) - 1.0) * 100.0 if min(last) > 0 else math.inf
    client = text[text.find("Client:"):] if "Client:" in text else text
    m = re.search(r"Avg latency: (\d+) usec", client)
    if m:
        out["avg_ms"] = int(m.group(1)) / 1000.0
    m = re.search(r"Request count: (\d+)", client)
    if m:
        out["measured_requests"] = int(m.group(1))
    return out


def run_perf_analyzer(binary: str, model: str, protocol: str, url: str, data: Path,
                      concurrency: int, window_ms: int, max_trials: int, stability: float,
                      timeout_s: float, workdir: Path, log=None) -> dict:
    """One concurrency level. perf_analyzer reports only a "stable" result: the last 3 windows
    all saw completions and their throughputs and latencies lie within --stability-percentage.
    When it gives up (or a window saw no request), the point is measured once more with doubled
    windows and without the spread rule. → result fields (+ "error" on failure)."""
    env = perf_analyzer_env()
    window, trials, stab = window_ms, max_trials, stability
    for attempt in (1, 2):
        csv_path = workdir / f"pa_{model}_{protocol}_{concurrency}_{os.getpid()}.csv"
        csv_path.unlink(missing_ok=True)
        cmd = perf_analyzer_command(binary, model, protocol, url, data, concurrency, window,
                                    trials, stab, csv_path)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired as exc:
            text = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            if log:
                log.write(f"$ {' '.join(cmd)}\n{text}\n(timed out after {timeout_s:.0f} s)\n")
            return {"window_ms": window, "attempts": attempt,
                    "error": f"perf_analyzer timed out after {timeout_s:.0f} s"}
        text = done.stdout + done.stderr
        if log:
            log.write(f"$ {' '.join(cmd)}\n{text}\n(exit {done.returncode})\n")
            log.flush()
        if done.returncode == 0 and csv_path.is_file():
            result = {**parse_perf_csv(csv_path), **parse_perf_stdout(done.stdout),
                      "window_ms": window, "attempts": attempt}
            csv_path.unlink(missing_ok=True)
            return result
        if attempt == 1 and (UNSTABLE in text or NO_REQUESTS in text):
            window, trials, stab = window * 2, max(trials, 3), NO_STABILITY_RULE
            continue
        lines = [line for line in text.splitlines() if line.strip()]
        errors = [line for line in lines if "rror" in line or "ailed" in line] or lines[-3:]
        return {"window_ms": window, "attempts": attempt,
                "error": f"perf_analyzer exit {done.returncode}: " + " | ".join(errors[-3:])}
    raise AssertionError("unreachable")


def window_for(args, concurrency: int, single_s: float, previous: tuple[int, float] | None) -> int:
    """Window length (ms) for one concurrency level. The latency there is predicted from the
    previous level's mean latency (growing in proportion to concurrency once the server is
    saturated) or, first, from one request alone times the concurrency. A window lasts at least --window-latencies
    such latencies (batches complete in bursts) and long enough for --window-completions
    requests at that rate, between --measurement-interval and --max-window-ms."""
    if previous is not None and previous[1] > 0:
        latency = max(single_s, previous[1] * concurrency / previous[0])
    else:  # nothing measured yet: assume requests gain nothing from running together
        latency = single_s * concurrency
    want = latency * 1000.0 * max(args.window_latencies, args.window_completions / concurrency)
    return int(math.ceil(min(max(args.measurement_interval, want),
                             max(args.max_window_ms, args.measurement_interval))))


# ============================================================================ Triton statistics / config

def triton_module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


def triton_client(protocol: str, url: str):
    tc = triton_module(protocol)
    if protocol == "grpc":
        return tc.InferenceServerClient(url)
    return tc.InferenceServerClient(url, connection_timeout=600.0, network_timeout=600.0)


def statistics_client(protocol: str, url: str, model: str):
    from client.tokenizer_client import AudioTokenizerClient

    return AudioTokenizerClient(url, protocol=protocol, model=model)


def settle(stats_client, model: str, timeout_s: float = 30.0) -> dict:
    """Statistics once the model's request count stops moving (requests still in flight when
    perf_analyzer exits finish first)."""
    last = stats_client.statistics()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = stats_client.statistics()
        key = lambda s: tuple(s.get(m, {}).get(k, 0) for m in sorted(s)
                              for k in ("success_count", "fail_count", "execution_count"))
        if key(now) == key(last):
            return now
        last = now
    return last


def breakdown(before: dict, after: dict, wall_s: float) -> dict:
    """Per model between two `AudioTokenizerClient.statistics()` snapshots: requests, failed,
    mean request / queue / compute ms per request, average batch size, utilisation."""
    out = {}
    for name, now in after.items():
        old = before.get(name, {})

        def d(key):
            return now.get(key, 0) - old.get(key, 0)

        requests = d("success_count")
        executions = d("execution_count")
        old_batches = old.get("batches", {})
        busy_ns = sum(ns - old_batches.get(size, (0, 0))[1]
                      for size, (_, ns) in now.get("batches", {}).items())
        per = (lambda ns: ns / requests / 1e6) if requests else (lambda ns: math.nan)
        out[name] = {
            "requests": requests,
            "failed": d("fail_count"),
            "request_ms": per(d("success_ns")),
            "queue_ms": per(d("queue_ns")),
            "compute_ms": per(d("compute_input_ns") + d("compute_infer_ns") + d("compute_output_ns")),
            "avg_batch": d("inference_count") / executions if executions else math.nan,
            "util": busy_ns / 1e9 / wall_s if wall_s > 0 else math.nan,
        }
    return out


def _config_dict(raw) -> dict:
    if isinstance(raw, dict) and "config" in raw and isinstance(raw["config"], dict):
        return raw["config"]
    return raw


def server_config(protocol: str, url: str) -> dict:
    """The repository options as the server reports them (read from vq02 and the members)."""
    client = triton_client(protocol, url)
    kwargs = {"as_json": True} if protocol == "grpc" else {}
    configs = {}
    with contextlib.suppress(Exception):
        for m in MEMBERS:
            configs[m] = _config_dict(client.get_model_config(m, **kwargs))
    with contextlib.suppress(Exception):
        client.close()
    out = {c: "" for c in CONFIG_COLUMNS}
    main = configs.get("vq02")
    if not main:
        return out
    batching = main.get("dynamic_batching", {}) or {}
    out["max_batch_size"] = int(main.get("max_batch_size", 0))
    out["queue_delay_us"] = int(batching.get("max_queue_delay_microseconds", 0))
    out["preferred_batch_sizes"] = " ".join(str(int(s)) for s in batching.get("preferred_batch_size", [])) or "-"
    out["instances"] = " ".join(
        f"{m}={sum(int(g.get('count', 1)) for g in configs[m].get('instance_group', []))}"
        for m in MEMBERS if m in configs)
    settings = (main.get("parameters", {}).get("tokenizer_settings", {}) or {}).get("string_value")
    with contextlib.suppress(Exception):
        out["num_threads"] = int(json.loads(settings).get("num_threads", 0))
    return out


# ============================================================================ one server: the sweep

@dataclasses.dataclass
class Target:
    label: str
    weights: str
    urls: dict[str, str]


def infer_once(client, protocol: str, model: str, arrays: dict[str, np.ndarray]):
    tc = triton_module(protocol)
    inputs = []
    for name, array in arrays.items():
        tensor = tc.InferInput(name, [1, *array.shape], TRITON_DTYPES[array.dtype])
        if protocol == "http":
            tensor.set_data_from_numpy(array[None], binary_data=True)
        else:
            tensor.set_data_from_numpy(array[None])
        inputs.append(tensor)
    return client.infer(model, inputs)


def server_codes(protocol: str, url: str):
    """`codes(clip)` for token_merge inputs: the clip's real codes from the server's ensemble."""
    from client.tokenizer_client import AudioTokenizerClient

    tokenizer = AudioTokenizerClient(url, protocol=protocol)
    cache: dict = {}

    def codes(clip: Clip):
        key = (clip.seconds, clip.seed)
        if key not in cache:
            out = tokenizer.tokenize(clip.audio, clip.rate)
            cache[key] = (out["vq02_codes"], out["vq06_codes"])
        return cache[key]

    return codes


def auto_timeout(window_ms: int, max_trials: int, concurrency: int, latency_s: float) -> float:
    """Generous bound on one perf_analyzer run: start-up, ramp-up, at most max_trials (+ the
    fallback's 3) windows, and the drain of `concurrency` requests."""
    return 60.0 + 1.5 * (max_trials + 3) * window_ms / 1000.0 + 3.0 * concurrency * latency_s


class CsvSink:
    """Rows appended to OUT.csv as they come (a stopped sweep keeps what it measured)."""

    def __init__(self, path: Path, append: bool = False):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        if append and path.is_file():
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames != COLUMNS:
                    raise SweepError(f"{path} has other columns than this sweep writes; "
                                     "cannot --append to it")
                self.rows = list(reader)
            return
        with open(path, "w", newline="") as fh:
            csv.DictWriter(fh, COLUMNS).writeheader()

    def add(self, row: dict) -> None:
        row = {c: fmt(row.get(c, "")) for c in COLUMNS}
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, COLUMNS).writerow(row)
        self.rows.append(row)


def fmt(value):
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"
    return value


def sweep_target(target: Target, args, sink: CsvSink, workdir: Path, binary: str, log,
                 started: float) -> dict:
    protocols = list(target.urls)
    config = server_config(protocols[0], target.urls[protocols[0]])
    base = {"label": target.label, "weights": target.weights, **config}
    for model, seconds in itertools.product(args.models, args.clip_seconds):
        clips = speech_clips(seconds, args.clips_per_length)
        ident = {**base, "model": model, "clip_s": seconds}
        first = protocols[0]
        try:
            codes = server_codes(first, target.urls[first]) if model == "token_merge" else None
            doc = input_data(model, clips, codes=codes, encoding=args.encoding,
                             send_channels=args.send_channels)
            data = write_input_data(workdir / f"{slug(target.label)}_{model}_{seconds:g}s.json", doc)
            # one request per clip: checks the inputs, warms up, sizes the windows
            client = triton_client(first, target.urls[first])
            latencies = []
            for clip in clips:
                arrays = model_arrays(model, clip, codes=codes, send_channels=args.send_channels)
                t0 = time.perf_counter()
                infer_once(client, first, model, arrays)
                latencies.append(time.perf_counter() - t0)
            client.close()
        except Exception as exc:  # noqa: BLE001 - reported in the rows, the sweep goes on
            message = f"preparing inputs / first request failed: {type(exc).__name__}: {exc}"
            print(f"  {model} {seconds:g}s: {message}", file=sys.stderr)
            for protocol, c in itertools.product(protocols, args.concurrency):
                sink.add({**ident, "protocol": protocol, "concurrency": c, "error": message})
            continue
        latency = statistics.median(latencies)
        for protocol in protocols:
            url = target.urls[protocol]
            stats = statistics_client(protocol, url, model)
            previous = None  # (concurrency, mean latency s) of the last point measured
            for c in sorted(args.concurrency):
                row = {**ident, "protocol": protocol, "concurrency": c}
                window = window_for(args, c, latency, previous)
                if args.max_total_s and time.monotonic() - started > args.max_total_s:
                    sink.add({**row, "error": f"skipped: --max-total-s {args.max_total_s:g} reached"})
                    continue
                timeout = args.run_timeout_s or auto_timeout(window, args.max_trials, c, latency)
                print(f"  {target.label} {model} {protocol} {seconds:g}s c={c}: window {window} ms, "
                      f"single request {latency * 1000:.0f} ms ...", end="", flush=True)
                before = stats.statistics()
                t0 = time.monotonic()
                result = run_perf_analyzer(binary, model, protocol, url, data, c, window,
                                           args.max_trials, args.stability, timeout, workdir, log)
                after = settle(stats, model)
                wall = time.monotonic() - t0
                parts = breakdown(before, after, wall)
                row.update(result)
                row["wall_s"] = wall
                row["loadavg_1m"] = os.getloadavg()[0]  # others' CPU work shows here
                own = parts.get(model, {})
                row["server_requests"] = own.get("requests", "")
                row["server_failed"] = own.get("failed", "")
                row["server_request_ms"] = own.get("request_ms", math.nan)
                for m in MEMBERS:
                    if m in parts and parts[m]["requests"]:
                        for f in MEMBER_FIELDS:
                            row[f"{m}_{f}"] = parts[m][f]
                if not row.get("error") and own.get("failed"):
                    row["error"] = f"{own['failed']} requests failed on the server"
                sink.add(row)
                if not row.get("error"):
                    previous = (c, row.get("avg_ms", row["p50_ms"]) / 1000.0)
                print(" " + (row.get("error") or
                             f"{row['throughput_infer_s']:.2f} infer/s, p50 {row['p50_ms']:.0f} ms, "
                             f"p99 {row['p99_ms']:.0f} ms, window spread "
                             f"{row.get('spread_pct', math.nan):.0f} %"), flush=True)
            stats.close()
    return config


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "run"


# ============================================================================ own servers

@dataclasses.dataclass(frozen=True)
class ServerSpec:
    label: str
    options: object  # build_scripts.build_repository.RepositoryOptions
    preferred: tuple[int, ...] = ()


def server_specs(args, weights_label: str) -> list[ServerSpec]:
    from build_scripts.build_repository import BuildError, RepositoryOptions, parse_instances

    try:
        grid = {
            "mbs": int_list(args.max_batch_size),
            "qd": int_list(args.queue_delay_us),
            "inst": [(alt, parse_instances(alt)) for alt in alternatives(args.instances)],
            "thr": int_list(args.num_threads),
            "pref": [(alt, parse_preferred(alt)) for alt in alternatives(args.preferred_batch_sizes)],
        }
    except BuildError as exc:
        raise SweepError(str(exc)) from None
    # a label names the knobs that vary in this sweep or differ from the defaults
    defaults = {"mbs": [16], "qd": [2000], "inst": [("", ())], "thr": [0], "pref": [("none", ())]}
    varying = {k for k, v in grid.items() if len(v) > 1 or
               [x[1] if isinstance(x, tuple) else x for x in v] !=
               [x[1] if isinstance(x, tuple) else x for x in defaults[k]]}
    specs = []
    for mbs, qd, (inst_text, inst), thr, (pref_text, pref) in itertools.product(*grid.values()):
        shown = {"mbs": mbs, "qd": qd, "inst": inst_text or "default", "thr": thr,
                 "pref": pref_text or "none"}
        label = " ".join([weights_label] + [f"{k}={shown[k]}" for k in grid if k in varying])
        specs.append(ServerSpec(label, RepositoryOptions(max_batch_size=mbs, queue_delay_us=qd,
                                                         instances=inst, num_threads=thr,
                                                         max_audio_seconds=args.max_audio_seconds),
                                pref))
    return specs


def add_preferred_batch_sizes(repo: Path, sizes: tuple[int, ...]) -> None:
    """Put `preferred_batch_size` into the members' dynamic_batching blocks of a built repository
    (build_repository has no option for it; the sweep measures it on its own copies)."""
    if not sizes:
        return
    line = f"  preferred_batch_size: [ {', '.join(map(str, sizes))} ]\n"
    for model in MEMBERS:
        path = repo / model / "config.pbtxt"
        text = path.read_text(encoding="utf-8")
        if "preferred_batch_size" in text:
            text = re.sub(r"  preferred_batch_size: \[[^\]]*\]\n", "", text)
        new, count = re.subn(r"(dynamic_batching \{\n)", lambda m: m.group(1) + line, text, count=1)
        if count != 1:
            raise SweepError(f"{path}: no dynamic_batching block to put preferred sizes into")
        path.write_text(new, encoding="utf-8")


def resolve_weights(args) -> tuple[Path, str]:
    if args.weights:
        return Path(args.weights).expanduser().resolve(), Path(args.weights).name
    from build_scripts.make_synthetic_weights import build as build_weights

    return build_weights(args.preset, ROOT / "build" / "weights" / args.preset), args.preset


# ============================================================================ report: table and plots

def read_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        with open(path, newline="") as fh:
            rows += list(csv.DictReader(fh))
    return rows


def _num(value, default=math.nan) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def series_key(row: dict, varying: list[str]) -> str:
    parts = [f"{_num(row[c]):g} s" if c == "clip_s" else str(row[c]) for c in varying]
    return ", ".join(parts) or row["model"]


def group_series(rows: list[dict]) -> tuple[dict[str, list[dict]], list[str]]:
    good = [r for r in rows if not r.get("error") and _num(r.get("throughput_infer_s")) > 0]
    varying = [c for c in ("label", "model", "protocol", "clip_s")
               if len({r[c] for r in good}) > 1]
    series: dict[str, list[dict]] = {}
    for r in good:
        series.setdefault(series_key(r, varying), []).append(r)
    for points in series.values():
        points.sort(key=lambda r: int(r["concurrency"]))
    return series, varying


def plot(rows: list[dict], prefix: Path, title: str = "") -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return []
    series, _ = group_series(rows)
    if not series:
        return []
    prefix.parent.mkdir(parents=True, exist_ok=True)
    lines = all(len(points) > 1 for points in series.values())
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    outputs = []
    for kind in ("throughput", "latency"):
        fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
        if lines:
            for i, (name, points) in enumerate(series.items()):
                x = [int(r["concurrency"]) for r in points]
                color = colors[i % len(colors)]
                if kind == "throughput":
                    ax.plot(x, [_num(r["throughput_infer_s"]) for r in points], "o-", color=color,
                            label=name)
                else:
                    ax.plot(x, [_num(r["p50_ms"]) for r in points], "o-", color=color,
                            label=f"{name} p50")
                    ax.plot(x, [_num(r["p99_ms"]) for r in points], "s--", color=color,
                            label=f"{name} p99")
            ax.set_xscale("log", base=2)
            ticks = sorted({int(r["concurrency"]) for p in series.values() for r in p})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.set_xlabel("concurrency (requests in flight)")
            if kind == "latency":
                ax.set_yscale("log")
        else:  # one concurrency per series (a knob comparison): bars
            names = [name.replace(" ", "\n") + f"\nc={points[0]['concurrency']}"
                     for name, points in series.items()]
            pos = np.arange(len(names))
            if kind == "throughput":
                ax.bar(pos, [_num(p[0]["throughput_infer_s"]) for p in series.values()],
                       color=colors[0])
            else:
                ax.bar(pos - 0.2, [_num(p[0]["p50_ms"]) for p in series.values()], 0.4,
                       label="p50", color=colors[0])
                ax.bar(pos + 0.2, [_num(p[0]["p99_ms"]) for p in series.values()], 0.4,
                       label="p99", color=colors[1])
            ax.set_xticks(pos, names, fontsize=8)
        ax.set_ylabel("throughput (inferences/s)" if kind == "throughput" else "latency (ms)")
        if kind == "throughput":
            ax.set_ylim(bottom=0)
        ax.set_title(f"{title} — {'throughput' if kind == 'throughput' else 'p50 / p99 latency'}"
                     if title else kind)
        ax.grid(True, which="both", alpha=0.3)
        if lines or kind == "latency":
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = prefix.parent / f"{prefix.name}_{kind}.png"
        fig.savefig(path)
        plt.close(fig)
        outputs.append(path)
    return outputs


def table(rows: list[dict]) -> str:
    """A compact text table: one line per row, member columns where the run had them."""
    head = (f"{'label':<27}{'model':<16}{'proto':<6}{'clip':>5}{'conc':>5}{'infer/s':>9}"
            f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}  {'batch pre/02/06/mrg':<20}"
            f"{'queue ms 02/06':<16}{'util 02/06':<11}{'spread':>7}")
    out = [head, "-" * len(head)]

    def n(v, spec=".1f"):
        x = _num(v)
        return "-" if math.isnan(x) else format(x, spec)

    for r in rows:
        ident = (f"{r['label'][:26]:<27}{r['model']:<16}{r['protocol']:<6}{_num(r['clip_s']):>5g}"
                 f"{r['concurrency']:>5}")
        if r.get("error"):
            out.append(f"{ident}  error: {r['error'][:90]}")
            continue
        batches = "/".join(n(r.get(f"{m}_avg_batch")) for m in MEMBERS)
        queues = "/".join(n(r.get(f"{m}_queue_ms"), ".0f") for m in ("vq02", "vq06"))
        utils = "/".join(n(r.get(f"{m}_util"), ".2f") for m in ("vq02", "vq06"))
        out.append(f"{ident}{n(r['throughput_infer_s'], '.2f'):>9}{n(r['p50_ms'], '.0f'):>9}"
                   f"{n(r['p90_ms'], '.0f'):>9}{n(r['p99_ms'], '.0f'):>9}  {batches:<20}{queues:<16}"
                   f"{utils:<11}{n(r.get('spread_pct'), '.0f') + ' %':>7}")
    out.append("batch: average batch size per member (inferences / executions); queue: mean queue "
               "ms per request; util: busy time / wall time; spread: throughput max/min - 1 over "
               "the merged windows")
    return "\n".join(out)


# ============================================================================ main

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    where = ap.add_argument_group("server: a running one (--url ...) or its own (--preset / --weights)")
    where.add_argument("--url", help="HOST:PORT of the chosen protocol, or HOST for the default ports")
    where.add_argument("--grpc-url", help="HOST:PORT of gRPC (with --protocol both)")
    where.add_argument("--http-url", help="HOST:PORT of HTTP (with --protocol both)")
    where.add_argument("--label", default=None, help="label of a --url server in the results")
    where.add_argument("--preset", choices=("tiny", "full"), help="synthetic weights to serve")
    where.add_argument("--weights", help="a Step-Audio-Tokenizer weights directory to serve")
    where.add_argument("--max-batch-size", default="16", help="comma list, one server each")
    where.add_argument("--queue-delay-us", default="2000", help="comma list, one server each")
    where.add_argument("--instances", default="",
                       help="e.g. 'vq02=2,vq06=1'; ';' separates alternatives: 'vq02=1;vq02=2'")
    where.add_argument("--num-threads", default="0", help="torch/onnxruntime threads; comma list")
    where.add_argument("--preferred-batch-sizes", default="none",
                       help="dynamic batcher preferred sizes, e.g. '4,8'; ';' separates "
                            "alternatives: 'none;4,8'")
    where.add_argument("--max-audio-seconds", type=float, default=120.0)
    what = ap.add_argument_group("what to measure")
    what.add_argument("--protocol", default="grpc", choices=("grpc", "http", "both"))
    what.add_argument("--models", default=None, help=f"comma list of {', '.join(MODELS)} "
                                                     f"(default {DEFAULTS['models']})")
    what.add_argument("--concurrency", default=None, help=f"default {DEFAULTS['concurrency']}")
    what.add_argument("--clip-seconds", default=None, help=f"default {DEFAULTS['clip_seconds']}")
    what.add_argument("--clips-per-length", type=int, default=None,
                      help=f"different utterances per length, sent round-robin (default "
                           f"{DEFAULTS['clips_per_length']})")
    what.add_argument("--no-channels", dest="send_channels", action="store_false",
                      help="leave out the optional `channels` input")
    what.add_argument("--encoding", default="b64", choices=("b64", "content"),
                      help="how tensors are written into the input JSON")
    how = ap.add_argument_group("bounds")
    how.add_argument("--measurement-interval", type=int, default=None,
                     help=f"minimum window in ms (default {DEFAULTS['measurement_interval']})")
    how.add_argument("--window-latencies", type=float, default=None,
                     help="a window lasts at least this many (predicted) request latencies "
                          f"(default {DEFAULTS['window_latencies']:g})")
    how.add_argument("--window-completions", type=float, default=None,
                     help="... and long enough for this many requests to complete "
                          f"(default {DEFAULTS['window_completions']:g})")
    how.add_argument("--max-window-ms", type=int, default=None,
                     help=f"longest window (default {DEFAULTS['max_window_ms']})")
    how.add_argument("--max-trials", type=int, default=None,
                     help=f"windows per point at most (default {DEFAULTS['max_trials']})")
    how.add_argument("--stability", type=float, default=None,
                     help="perf_analyzer --stability-percentage (default "
                          f"{DEFAULTS['stability']:g}: any spread, but every window needs "
                          "completions; the spread is reported in the CSV instead)")
    how.add_argument("--run-timeout-s", type=float, default=0.0,
                     help="subprocess timeout per perf_analyzer run (default: from the window)")
    how.add_argument("--max-total-s", type=float, default=0.0,
                     help="skip the remaining points after this many seconds (0: no limit)")
    how.add_argument("--quick", action="store_true",
                     help="small and fast (tests): concurrency 1,2, one 3 s clip, 1 s windows, "
                          "at most 3 windows")
    out = ap.add_argument_group("output")
    out.add_argument("--out", default=str(ROOT / "perf" / "results" / "sweep"),
                     help="prefix of OUT.csv, OUT_throughput.png, OUT_latency.png, OUT.json")
    out.add_argument("--append", action="store_true",
                     help="add rows to an existing OUT.csv (plots and table then show all rows)")
    out.add_argument("--title", default="", help="plot title")
    out.add_argument("--workdir", default=None, help="keep input JSON, logs and perf_analyzer "
                                                     "output here (default: a temporary folder)")
    out.add_argument("--repositories", default=str(ROOT / "build" / "perf_repositories"),
                     help="where the model repositories of --preset/--weights servers are built")
    out.add_argument("--perf-analyzer", default=None, help="perf_analyzer binary")
    out.add_argument("--replot", nargs="+", metavar="CSV",
                     help="only remake the plots (OUT_*.png) and the table from CSV files")
    return ap


def finish_args(args) -> argparse.Namespace:
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models = model_list(args.models)
    args.concurrency = int_list(args.concurrency)
    if any(c < 1 for c in args.concurrency):
        raise SweepError("concurrency must be >= 1")
    args.clip_seconds = float_list(args.clip_seconds)
    if args.clips_per_length < 1 or args.max_trials < 1 or args.measurement_interval < 100:
        raise SweepError("--clips-per-length and --max-trials must be >= 1, "
                         "--measurement-interval >= 100 ms")
    external = bool(args.url or args.grpc_url or args.http_url)
    if external and (args.preset or args.weights):
        raise SweepError("give either a running server (--url ...) or --preset/--weights, not both")
    if not external and not (args.preset or args.weights):
        raise SweepError("give a running server (--url HOST:PORT) or --preset tiny|full / --weights DIR")
    if args.preset and args.weights:
        raise SweepError("--preset and --weights exclude each other")
    args.external = external
    return args


def git_state() -> str:
    """The commit the server code came from, and whether the tree had local changes."""
    def git(*cmd):
        done = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=30)
        return done.stdout.strip() if done.returncode == 0 else ""

    with contextlib.suppress(Exception):
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return head + (" (with uncommitted changes)" if dirty else "")
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    prefix = Path(args.out).expanduser().resolve()
    if args.replot:
        rows = read_rows([Path(p) for p in args.replot])
        for path in plot(rows, prefix, args.title):
            print(f"wrote {path}")
        print(table(rows))
        return 0
    try:
        args = finish_args(args)
        binary = perf_analyzer_binary(args.perf_analyzer)
        urls = resolve_urls(args.protocol, args.url, args.grpc_url, args.http_url) if args.external else {}
    except SweepError as exc:
        ap.error(str(exc))
    workdir_ctx = (contextlib.nullcontext(Path(args.workdir)) if args.workdir
                   else tempfile.TemporaryDirectory(prefix="perf_sweep_"))
    started = time.monotonic()
    meta = {"command": [sys.executable, *sys.argv] if argv is None else ["perf/perf_sweep.py", *argv],
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpus": os.cpu_count()},
            "git": git_state(),
            "perf_analyzer": subprocess.run([binary, "--version"], capture_output=True, text=True,
                                            env=perf_analyzer_env()).stdout.strip(),
            "servers": []}
    try:
        sink = CsvSink(prefix.parent / f"{prefix.name}.csv", append=args.append)
    except SweepError as exc:
        ap.error(str(exc))
    before_rows = len(sink.rows)
    with workdir_ctx as workdir:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        with open(workdir / "perf_analyzer.log", "a") as log:
            if args.external:
                label = args.label or "server"
                print(f"sweeping {', '.join(f'{p} {u}' for p, u in urls.items())}")
                config = sweep_target(Target(label, args.label or "external", urls), args, sink,
                                      workdir, binary, log, started)
                meta["servers"].append({"label": label, "urls": urls, **config})
            else:
                from build_scripts.build_repository import build as build_repository
                from build_scripts.serve import TritonServer

                weights, weights_label = resolve_weights(args)
                for spec in server_specs(args, weights_label):
                    repo = build_repository(weights, Path(args.repositories) / slug(spec.label),
                                            spec.options)
                    add_preferred_batch_sizes(repo, spec.preferred)
                    print(f"starting tritonserver: {spec.label} ({repo})", flush=True)
                    server_log = workdir / f"tritonserver_{slug(spec.label)}.log"
                    with TritonServer(repo, address="127.0.0.1", log_file=server_log) as server:
                        urls = {p: server.grpc_url if p == "grpc" else server.http_url
                                for p in (PROTOCOLS if args.protocol == "both" else (args.protocol,))}
                        config = sweep_target(Target(spec.label, weights_label, urls), args, sink,
                                              workdir, binary, log, started)
                    meta["servers"].append({"label": spec.label, "repository": str(repo), **config})
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["rows"] = len(sink.rows) - before_rows
    meta_path = prefix.parent / f"{prefix.name}.json"
    if args.append and meta_path.is_file():
        with contextlib.suppress(ValueError):
            old = json.loads(meta_path.read_text())
            meta = {"runs": old.get("runs", [old]) + [meta]}
    # paths relative to the project: the record says what ran, not where
    meta_path.write_text(json.dumps(meta, indent=1).replace(f"{ROOT}/", "") + "\n")
    paths = plot(sink.rows, prefix, args.title)
    print()
    print(table(sink.rows))
    print(f"\nwrote {sink.path}" + "".join(f", {p}" for p in paths) +
          f", {meta_path} ({time.monotonic() - started:.0f} s)")
    new = sink.rows[before_rows:]
    return 1 if new and all(r.get("error") for r in new) else 0


if __name__ == "__main__":
    sys.exit(main())
