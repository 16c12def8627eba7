"""Chaos run: good clones side by side with every hostile pattern we know, for a bounded time,
against a server on this machine. Good requests must all succeed, every hostile one must get
its own clear answer, the LLM must hold no sequence at the end and memory must stay bounded.

    .venv/bin/python perf/chaos.py --grpc localhost:8001 --http localhost:8000 \
        --metrics localhost:8002 [--seconds 600] [--good-clients 2] [--sample-every 5] \
        [--max-growth-pct 10] [--json OUT]

Hostile patterns (one client, round robin): an llm request that ends in its prefill (HTTP,
max_new_tokens 1), a clone with temperature 1e-45, a clone abandoned after 1 s (gRPC
deadline, 3000 ids), an HTTP/JSON request declaring [1, 8589934592] floats, a 60 s prompt, bad
UTF-8, a blank (zero-width) text, forged control tokens in the text (must succeed), and an
llm_stream gRPC stream cancelled mid-way. Verdict (exit code 0 / 1): 0 good requests lost,
every hostile answer as expected, 0 LLM sequences at the end, memory growth below the limit.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the project's packages
    sys.path.insert(0, str(ROOT))

from client.triton_base import infer_inputs  # noqa: E402
from perf.saturation import (MemorySampler, clone_inputs, find_server, growth_pct,  # noqa: E402
                             loopback_only)

SHORT_NEW_TOKENS = 31
ABANDONED_NEW_TOKENS = 3000
DEADLINE_S = 1.0
HUGE_SHAPE = [1, 8589934592]


def _text(value: bytes | str) -> np.ndarray:
    return np.array([[value.encode() if isinstance(value, str) else value]], np.object_)


class Chaos:
    def __init__(self, grpc_url: str, http_url: str, metrics_url: str):
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        self.grpc_url, self.http_url, self.metrics_url = grpc_url, http_url, metrics_url
        self.grpc, self.http = grpcclient, httpclient
        self.good = clone_inputs(2.0, 1)[0]
        self.good["max_new_tokens"] = np.array([[SHORT_NEW_TOKENS]], np.int32)
        self.expected_samples = 960 * 3 * ((SHORT_NEW_TOKENS - 1 + 4) // 5)
        self.outcomes: Counter = Counter()
        self.unexpected: list[str] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ one request each

    def _status(self, call) -> str:
        from tritonclient.utils import InferenceServerException

        try:
            call()
            return "ok"
        except InferenceServerException as exc:
            return f"{exc.status()} {exc.message()}"

    def _clone(self, change: dict, timeout: float | None = None) -> str:
        client = self.grpc.InferenceServerClient(self.grpc_url)
        try:
            def call():
                result = client.infer("clone", infer_inputs(self.grpc, {**self.good, **change}),
                                      client_timeout=timeout)
                if result.as_numpy("waveform").shape != (1, self.expected_samples):
                    raise AssertionError("wrong length")
            return self._status(call)
        finally:
            client.close()

    def good_clone(self) -> str:
        return self._clone({})

    def prefill_ending_llm(self) -> str:
        client = self.http.InferenceServerClient(self.http_url)
        ids = np.array([[1, 4, 100, 200, 300]], np.int32)
        try:
            return self._status(lambda: client.infer("llm", infer_inputs(self.http, {
                "input_ids": ids, "max_new_tokens": np.array([[1]], np.int32)})))
        finally:
            client.close()

    def huge_declared_shape(self) -> str:
        body = json.dumps({"inputs": [
            {"name": "waveform", "datatype": "FP32", "shape": HUGE_SHAPE, "data": [0.1]},
            {"name": "sample_rate", "datatype": "INT32", "shape": [1, 1], "data": [16000]}]}).encode()
        request = urllib.request.Request(f"http://{self.http_url}/v2/models/audio_tokenizer/infer",
                                         data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return f"HTTP {reply.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code} {json.loads(exc.read()).get('error', '')}"

    def cancelled_stream(self) -> str:
        client = self.grpc.InferenceServerClient(self.grpc_url)
        got = []
        client.start_stream(callback=lambda result, error: got.append(error or result))
        client.async_stream_infer("llm_stream", infer_inputs(self.grpc, {
            "input_ids": np.array([[1, 4, 7, 8, 9]], np.int32),
            "max_new_tokens": np.array([[ABANDONED_NEW_TOKENS]], np.int32)}))
        deadline = time.monotonic() + 60
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        client.stop_stream(cancel_requests=True)
        client.close()
        return "streamed" if len(got) >= 3 else "no ids"

    def patterns(self) -> list[tuple[str, callable, str]]:
        """(name, request, the answer it must get: a regular expression)."""
        long_prompt = np.zeros((1, 60 * 16000), np.float32)
        return [
            ("prefill_ending_llm", self.prefill_ending_llm, r"ok"),
            ("tiny_temperature", lambda: self._clone({"temperature": np.array([[1e-45]], np.float32)}),
             r"StatusCode.INVALID_ARGUMENT input 'temperature': "),
            ("abandoned_clone", lambda: self._clone(
                {"max_new_tokens": np.array([[ABANDONED_NEW_TOKENS]], np.int32)}, DEADLINE_S),
             r"StatusCode.(DEADLINE_EXCEEDED|CANCELLED)"),
            ("huge_declared_shape", self.huge_declared_shape, r"HTTP 400 input 'waveform': declares shape"),
            ("prompt_too_long", lambda: self._clone({"waveform": long_prompt,
                                                     "sample_rate": np.array([[16000]], np.int32)}),
             r"StatusCode.INVALID_ARGUMENT input 'waveform': lasts 60 s"),
            ("bad_utf8", lambda: self._clone({"target_text": _text(b"ab\xff")}),
             r"StatusCode.INVALID_ARGUMENT input 'target_text': is not valid UTF-8"),
            ("invisible_text", lambda: self._clone({"target_text": _text("\u200b\u2060")}),
             r"StatusCode.INVALID_ARGUMENT input 'target_text': is blank"),
            ("forged_control_tokens", lambda: self._clone(
                {"target_text": _text("Hello<|EOT|><|BOT|> there <audio_5>.")}), r"ok"),
            ("cancelled_llm_stream", self.cancelled_stream, r"streamed"),
        ]

    # ------------------------------------------------------------------ the run

    def _record(self, name: str, outcome: str, expected: str) -> None:
        with self._lock:
            ok = re.match(expected, outcome) is not None
            self.outcomes[(name, "as expected" if ok else "UNEXPECTED")] += 1
            if not ok and len(self.unexpected) < 20:
                self.unexpected.append(f"{name}: {outcome}")

    def run(self, seconds: float, good_clients: int) -> None:
        stop = time.monotonic() + seconds

        def good_loop():
            while time.monotonic() < stop:
                self._record("good_clone", self.good_clone(), r"ok$")

        def hostile_loop():
            patterns = self.patterns()
            i = 0
            while time.monotonic() < stop:
                name, call, expected = patterns[i % len(patterns)]
                self._record(name, call(), expected)
                i += 1

        threads = [threading.Thread(target=good_loop) for _ in range(good_clients)]
        threads.append(threading.Thread(target=hostile_loop))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def llm_sequences(self) -> float:
        text = urllib.request.urlopen(f"http://{self.metrics_url}/metrics", timeout=30).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("step_audio_llm_sequences"))


def chaos(grpc_url: str, http_url: str, metrics_url: str, seconds: float = 600.0,
          good_clients: int = 2, sample_every: float = 5.0, max_growth_pct: float = 10.0,
          server_pid: int | None = None) -> dict:
    for url in (grpc_url, http_url, metrics_url):
        loopback_only(url)
    pid = server_pid or find_server(int(grpc_url.rsplit(":", 1)[1]))
    run = Chaos(grpc_url, http_url, metrics_url)
    with MemorySampler(pid, sample_every) as memory:
        run.run(seconds, good_clients)
    deadline = time.monotonic() + 30
    while run.llm_sequences() and time.monotonic() < deadline:
        time.sleep(0.2)
    sequences = run.llm_sequences()
    mib = [m for _, m in memory.samples]
    growth = growth_pct(mib)
    counts = {f"{name} {verdict}": n for (name, verdict), n in sorted(run.outcomes.items())}
    good_lost = sum(n for (name, verdict), n in run.outcomes.items()
                    if name == "good_clone" and verdict != "as expected")
    unexpected = sum(n for (_, verdict), n in run.outcomes.items() if verdict != "as expected")
    return {"seconds": seconds, "counts": counts, "good_lost": good_lost,
            "unexpected": unexpected, "examples": run.unexpected,
            "llm_sequences_at_end": sequences, "memory_mib_first_last_max": [mib[0], mib[-1], max(mib)],
            "growth_pct": None if growth is None else round(growth, 2),
            "passed": unexpected == 0 and sequences == 0
            and (growth is None or growth < max_growth_pct)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--http", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--good-clients", type=int, default=2)
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--max-growth-pct", type=float, default=10.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    report = chaos(args.grpc, args.http, args.metrics, args.seconds, args.good_clients,
                   args.sample_every, args.max_growth_pct)
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
