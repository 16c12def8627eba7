"""Benchmark: time to first audio of `clone_stream` against `clone`'s total, in the same run, on
one real tritonserver, at several concurrencies. Not a test: numbers go to perf/RESULTS.md.

    .venv/bin/python perf/bench_stream.py --preset tiny --concurrency 1,4,16
    .venv/bin/python perf/bench_stream.py --preset full --seconds 5 --concurrency 1 --threads 2

At each concurrency C, C clients send `clone` at once (different seeds, one voice whose prompt
is cached by a warm-up call), then C clients send `clone_stream` with the same requests. Per
request: `clone`'s total, and the stream's first-audio arrival and total as its client sees
them. Printed: p50 / p99 of each, and first audio / clone total (the ratio the streaming decoder
buys). `--seconds` sets the utterance length: the synthetic LLM never says <|EOT|>, so
max_new_tokens = 5·ceil(25·seconds/3) + 1 ids give that much audio (960 samples per row).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from build_scripts.espeak_clips import speech_with_transcript
from build_scripts.make_synthetic_editx import build as build_editx
from build_scripts.make_synthetic_weights import build as build_tokenizer_weights
from perf.bench_llm import machine_name

TARGET_TEXT = "Triton streams this cloned voice while the model is still speaking."


def new_tokens_for(seconds: float) -> int:
    rows = 3 * math.ceil(25 * seconds / 3)
    return rows // 3 * 5 + 1  # the last generated id is dropped


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_level(url: str, clip, concurrency: int, max_new_tokens: int, timeout_s: float) -> dict:
    from client.clone_client import CloneClient

    def one(i: int, stream: bool) -> dict:
        with CloneClient(url, "grpc", timeout_s=timeout_s) as client:
            start = time.perf_counter()
            wave, _ = client.clone(clip[0], clip[1], clip[2], TARGET_TEXT, stream=stream,
                                   seed=1000 + i, max_new_tokens=max_new_tokens)
            total = time.perf_counter() - start
            return {"total": total, "first": client.first_chunk_s if stream else None,
                    "chunks": len(client.chunk_seconds) if stream else 1,
                    "audio_s": wave.size / 24000}

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        unary = list(pool.map(lambda i: one(i, False), range(concurrency)))
        streamed = list(pool.map(lambda i: one(i, True), range(concurrency)))
    clone_total = [r["total"] for r in unary]
    first = [r["first"] for r in streamed]
    return {
        "concurrency": concurrency,
        "audio_s": unary[0]["audio_s"],
        "clone_total_p50": percentile(clone_total, 50), "clone_total_p99": percentile(clone_total, 99),
        "stream_first_p50": percentile(first, 50), "stream_first_p99": percentile(first, 99),
        "stream_total_p50": percentile([r["total"] for r in streamed], 50),
        "stream_total_p99": percentile([r["total"] for r in streamed], 99),
        "chunks": streamed[0]["chunks"],
        "first_over_clone_total_p50": percentile(first, 50) / percentile(clone_total, 50),
    }


def table(levels: list[dict]) -> str:
    head = (f"{'C':>3} {'audio s':>8} {'clone p50':>10} {'clone p99':>10} {'first p50':>10} "
            f"{'first p99':>10} {'stream p50':>11} {'stream p99':>11} {'chunks':>6} "
            f"{'first/clone':>11}")
    rows = [f"{r['concurrency']:>3} {r['audio_s']:>8.2f} {r['clone_total_p50']:>10.3f} "
            f"{r['clone_total_p99']:>10.3f} {r['stream_first_p50']:>10.3f} "
            f"{r['stream_first_p99']:>10.3f} {r['stream_total_p50']:>11.3f} "
            f"{r['stream_total_p99']:>11.3f} {r['chunks']:>6} "
            f"{r['first_over_clone_total_p50']:>11.3f}" for r in levels]
    return "\n".join([head, "-" * len(head), *rows])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--seconds", type=float, default=5.0, help="utterance length (>= 5 for the target)")
    ap.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    ap.add_argument("--prompt-seconds", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per model instance")
    ap.add_argument("--timeout", type=float, default=3600.0, help="client deadline per request, s")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    from build_scripts.build_repository import RepositoryOptions, build as build_repository
    from build_scripts.serve import TritonServer
    from client.clone_client import CloneClient

    weights = ROOT / "build" / "weights"
    tokenizer_weights = build_tokenizer_weights(args.preset, weights / args.preset)
    editx_dir = build_editx(args.preset, weights / f"{args.preset}-editx")
    levels = [int(c) for c in args.concurrency.split(",")]
    repo = build_repository(tokenizer_weights, ROOT / "build" / "bench_stream_repository",
                            RepositoryOptions(num_threads=args.threads,
                                              max_active_sequences=max(16, max(levels))),
                            editx=editx_dir)
    audio, rate, transcript = speech_with_transcript(args.prompt_seconds, seed=5)
    clip = (audio, rate, transcript)
    max_new_tokens = new_tokens_for(args.seconds)
    results = []
    with TritonServer(repo) as server:
        with CloneClient(server.grpc_url, "grpc", timeout_s=args.timeout) as warm:
            for stream in (False, True):  # caches the voice in both models, loads every path
                warm.clone(audio, rate, transcript, TARGET_TEXT, stream=stream, seed=1,
                           max_new_tokens=11)
        for concurrency in levels:
            results.append(run_level(server.grpc_url, clip, concurrency, max_new_tokens, args.timeout))
            print(table(results[-1:]).splitlines()[-1], flush=True)
    result = {"machine": machine_name("cpu"), "preset": args.preset, "threads": args.threads,
              "max_new_tokens": max_new_tokens, "levels": results}
    print(f"\nclone_stream vs clone  machine: {result['machine']}, preset {args.preset}, "
          f"{max_new_tokens - 1} LLM ids per request, prompt {args.prompt_seconds:g} s (cached); "
          "seconds as the clients see them")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
