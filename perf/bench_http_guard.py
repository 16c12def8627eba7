"""What the HTTP guard (build_scripts/http_guard.py) costs: the same HTTP requests straight to
tritonserver's own port and through the guard, alternating, in one run on one server.

    .venv/bin/python perf/bench_http_guard.py --repo build/model_repository [--requests 200]
        [--clip-seconds 3] [--json OUT]

Prints p50/p90 latency both ways and their ratio (guard / direct), for `audio_tokenizer`
(binary tensor extension, as tritonclient sends it) on a speech clip.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the project's packages
    sys.path.insert(0, str(ROOT))

from build_scripts.serve import TritonServer  # noqa: E402
from client.triton_base import infer_inputs  # noqa: E402
from perf.saturation import tokenizer_inputs  # noqa: E402


def _percentiles(samples: list[float]) -> dict:
    cuts = statistics.quantiles(samples, n=10)
    return {"p50_ms": round(statistics.median(samples) * 1000, 2), "p90_ms": round(cuts[8] * 1000, 2)}


def bench(repo: Path, requests: int, clip_seconds: float) -> dict:
    import tritonclient.http as httpclient

    arrays = tokenizer_inputs(clip_seconds, 1)[0]
    with TritonServer(repo, address="127.0.0.1") as server:
        clients = {"direct": httpclient.InferenceServerClient(f"127.0.0.1:{server.triton_http_port}"),
                   "guard": httpclient.InferenceServerClient(server.http_url)}
        times: dict[str, list[float]] = {name: [] for name in clients}
        for name, client in clients.items():  # warm-up
            client.infer("audio_tokenizer", infer_inputs(httpclient, arrays))
        for _ in range(requests):
            for name, client in clients.items():
                started = time.perf_counter()
                client.infer("audio_tokenizer", infer_inputs(httpclient, arrays))
                times[name].append(time.perf_counter() - started)
        body_bytes = sum(a.nbytes for a in arrays.values())
    report = {name: _percentiles(t) for name, t in times.items()}
    report["ratio_p50"] = round(report["guard"]["p50_ms"] / report["direct"]["p50_ms"], 3)
    report["added_p50_ms"] = round(report["guard"]["p50_ms"] - report["direct"]["p50_ms"], 2)
    report.update(requests=requests, clip_seconds=clip_seconds, request_tensor_bytes=body_bytes,
                  machine=f"{platform.machine()}, {platform.processor() or 'cpu'}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", required=True)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clip-seconds", type=float, default=3.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    report = bench(Path(args.repo), args.requests, args.clip_seconds)
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
