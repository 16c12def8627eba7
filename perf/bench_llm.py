"""Benchmark: Step1 generation tokens/s through BatchedGenerator at batch 1, 4 and 16 against
the HF-style batch-1 reference loop (`reference_generate`) on the same weights in the same run.
Not a test: numbers go to perf/RESULTS.md.

    .venv/bin/python perf/bench_llm.py --preset full --dtype bfloat16 --new-tokens 64
    .venv/bin/python perf/bench_llm.py --weights /path/to/Step-Audio-EditX --device cuda

Every request gets its own random prompt of --prompt-len ids and samples (seeded, temperature
0.7, top-k 50) exactly --new-tokens ids (max_length = prompt + new + 1; the original drops the
last). Times include prefill. "same ids" compares batch-1 output with the reference's.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from build_scripts.synthetic.step1_checkpoint import PRESETS, write_step1_checkpoint
from python_backends.llm.generator import BatchedGenerator
from python_backends.llm.reference import reference_generate, reference_weights
from python_backends.llm.sampling import SamplingParams
from python_backends.llm.step1_model import load_step1
from python_backends.settings import LLM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def machine_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"GPU {torch.cuda.get_device_name(torch.device(device))}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def weights_dir(args) -> Path:
    if args.weights:
        return Path(args.weights)
    out = ROOT / "build" / "weights" / f"step1_{args.preset}"
    if not (out / "config.json").exists():
        print(f"writing synthetic Step1 '{args.preset}' weights to {out} ...", flush=True)
        write_step1_checkpoint(out, args.preset, seed=0)
    return out


def prompts(count: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    audio = range(LLM.audio_token_offset, LLM.audio_token_offset + LLM.audio_tokens)
    return [[LLM.bos_id, LLM.bot_id] + [rng.choice(audio) for _ in range(length - 2)]
            for _ in range(count)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--weights", help="a Step1 checkpoint directory (overrides --preset)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]

    directory = weights_dir(args)
    model = load_step1(directory, device=args.device, dtype=DTYPES[args.dtype])
    generator = BatchedGenerator(model, max_active=max(batches), device=args.device)
    max_length = args.prompt_len + args.new_tokens + 1
    all_prompts = prompts(max(batches), args.prompt_len, seed=1)
    params = [SamplingParams(seed=i, max_length=max_length) for i in range(max(batches))]
    # warm-up over the same shapes (kernel selection, allocator, cache growth)
    generator.generate(all_prompts[:max(batches)], params)

    rows, batch1_ids = [], None
    for batch in batches:
        sync(args.device)
        start = time.perf_counter()
        out = generator.generate(all_prompts[:batch], params[:batch])
        sync(args.device)
        seconds = time.perf_counter() - start
        if batch == 1:
            batch1_ids = out[0]
        rows.append((f"BatchedGenerator batch {batch}", batch, sum(len(o) + 1 for o in out),
                     seconds))
    same = "-"
    if not args.no_reference:
        weights = reference_weights(model)  # shares the model's tensors
        sync(args.device)
        start = time.perf_counter()
        ref_ids = reference_generate(weights, all_prompts[0], params[0])
        sync(args.device)
        rows.append(("reference (HF-style) batch 1", 1, len(ref_ids) + 1,
                     time.perf_counter() - start))
        same = "yes" if batch1_ids is not None and ref_ids == batch1_ids else "no"

    config = model.config
    print(f"\nStep1 generation  machine: {machine_name(args.device)}")
    print(f"weights: {directory} (hidden {config.hidden_size}, {config.num_hidden_layers} "
          f"layers, {config.num_attention_heads}/{config.num_attention_groups} heads), "
          f"dtype {args.dtype}, device {args.device}, prompt {args.prompt_len} ids, "
          f"{args.new_tokens} new ids per request (+1 dropped), seeded sampling")
    ref_rate = rows[-1][2] / rows[-1][3] if not args.no_reference else None
    print(f"{'path':32} {'batch':>5} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} "
          f"{'vs ref':>7}")
    for name, batch, tokens, seconds in rows:
        rate = tokens / seconds
        ratio = f"{rate / ref_rate:6.2f}x" if ref_rate else "-"
        print(f"{name:32} {batch:5d} {tokens:7d} {seconds:8.2f} {rate:9.1f} {ratio:>7}")
    print(f"batch-1 ids equal to the reference's: {same}")


if __name__ == "__main__":
    main()
