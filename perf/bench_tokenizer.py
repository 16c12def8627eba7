"""Benchmark: one clip through the original algorithm (reference) and the fast path, in the same
run — in process, and through a real tritonserver (gRPC) — printing times, speed ratios and
whether the tokens are identical. Not a test: numbers go to perf/RESULTS.md.

    .venv/bin/python perf/bench_tokenizer.py --preset full --seconds 10
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from build_scripts.espeak_clips import speech_of_duration
from build_scripts.make_synthetic_weights import build
from python_backends.tokenizer.pipeline import FastTokenizer
from python_backends.tokenizer.reference import ReferenceTokenizer
from python_backends.settings import TokenizerSettings


def timed(fn, repeats: int):
    """Median wall time of `repeats` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def same(a, b) -> bool:
    return (np.array_equal(a.vq02, b.vq02) and np.array_equal(a.vq06, b.vq06)
            and np.array_equal(a.merged_ids, b.merged_ids) and a.token_str == b.token_str)


def via_triton(settings: TokenizerSettings, audio, rate, repeats: int, workdir: Path):
    from build_scripts.build_repository import build as build_repository
    from build_scripts.serve import TritonServer
    from client.tokenizer_client import AudioTokenizerClient
    from python_backends.tokenizer.pipeline import AudioTokens

    repo = build_repository(settings.weights_dir, workdir / "bench_repository")
    with TritonServer(repo) as server, AudioTokenizerClient(server.grpc_url, protocol="grpc") as client:
        client.tokenize(audio, rate)
        mark = client.statistics()
        seconds, out = timed(lambda: client.tokenize(audio, rate), repeats)
        stages = {name: round(s["busy_ms"] / max(s["executions"], 1), 1)
                  for name, s in client.stage_times(since=mark).items()}
    tokens = AudioTokens(np.asarray(out["vq02_codes"]), np.asarray(out["vq06_codes"]),
                         np.asarray(out["merged_ids"]), out["token_str"])
    return seconds, tokens, stages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="full", choices=["tiny", "full"])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-triton", action="store_true")
    args = ap.parse_args()

    weights = build(args.preset, ROOT / "build" / "weights" / args.preset)
    settings = TokenizerSettings(weights_dir=str(weights))
    audio, rate = speech_of_duration(args.seconds, seed=0)
    reference, fast = ReferenceTokenizer(settings), FastTokenizer(settings)

    ref_s, ref_out = timed(lambda: reference(audio, rate), args.repeats)
    fast_s, fast_out = timed(lambda: fast([(audio, rate)])[0], args.repeats)
    rows = {
        "machine": f"{platform.machine()} {platform.processor() or ''} cores={__import__('os').cpu_count()}".strip(),
        "preset": args.preset, "clip_seconds": args.seconds,
        "vq02_tokens": int(len(ref_out.vq02)), "vq06_tokens": int(len(ref_out.vq06)),
        "reference_s": round(ref_s, 3),
        "fast_in_process_s": round(fast_s, 3),
        "ratio_in_process": round(ref_s / fast_s, 2),
        "identical_in_process": same(ref_out, fast_out),
    }
    bf16 = FastTokenizer(dataclasses.replace(settings, vq02_precision="bf16"))
    bf16_s, bf16_out = timed(lambda: bf16([(audio, rate)])[0], args.repeats)
    rows.update(fast_bf16_vq02_s=round(bf16_s, 3), ratio_bf16=round(ref_s / bf16_s, 2),
                bf16_vq02_agreement_pct=round(100 * float(np.mean(bf16_out.vq02 == ref_out.vq02)), 2))
    audio16k = reference.preprocess(audio, rate)
    for stage, ref_fn, fast_fn in (
            ("vq02", lambda: reference.vq02(audio16k), lambda: fast.vq02([audio16k])[0]),
            ("vq06", lambda: reference.vq06(audio16k), lambda: fast.vq06([audio16k])[0])):
        stage_ref_s, stage_ref = timed(ref_fn, args.repeats)
        stage_fast_s, stage_fast = timed(fast_fn, args.repeats)
        rows[f"{stage}_reference_s"] = round(stage_ref_s, 3)
        rows[f"{stage}_fast_s"] = round(stage_fast_s, 3)
        rows[f"{stage}_ratio"] = round(stage_ref_s / stage_fast_s, 2)
        rows[f"{stage}_identical"] = bool(np.array_equal(stage_ref, stage_fast))
    if not args.no_triton:
        triton_s, triton_out, stages = via_triton(settings, audio, rate, args.repeats, ROOT / "build")
        rows.update(triton_grpc_s=round(triton_s, 3), ratio_triton=round(ref_s / triton_s, 2),
                    identical_triton=same(ref_out, triton_out), triton_stage_ms=stages)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
