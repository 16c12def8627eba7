"""Benchmark: Step1 decode steps against the memory-bandwidth roof, batched prefill, and the
HF-style reference, in one run. Not a test: numbers go to perf/RESULTS.md.

    .venv/bin/python perf/bench_llm.py --preset full --dtype bfloat16
    .venv/bin/python perf/bench_llm.py --weights /path/to/Step-Audio-EditX --device cuda:0 [--cuda-graphs]

Prints, in order:
1. the measured read bandwidth: torch `sum` over a 2 GB float32 tensor (best and median);
2. the roof of a decode step: the bytes of weights one step reads (every Linear, lm_head
   included, and the norms; not the embedding table) over that bandwidth;
3. our decode step at each --batches size (BatchedGenerator, contexts of --context ids,
   seeded sampling): best / median / worst over --steps steps; each step follows one
   bandwidth pass, and its ratio to the roof is taken at that pass's bandwidth (the shared
   machine's bandwidth moves too much for one figure taken earlier): best / median / worst;
4. prefill of --prefill-requests prompts of --prefill-len ids: one request per forward
   against all of them in one forward (the generator's batched prefill), tokens/s each;
5. the HF-style reference (`reference_generate`, batch 1): its decode step time, and how many
   of our batch-1 ids equal its ids (bf16: agreement, not identity; the reference's explicit
   softmax and, with --pad-rows, the 4-row product round differently). The reference needs the dense weights, so it reads them
   again after our (packed) model is freed: memory never holds two copies.

On a CPU the run switches to Intel OpenMP first (python_backends/llm/cpu_runtime.py;
STEP_AUDIO_OPENMP=gnu keeps GNU OpenMP). --no-pack runs plain `F.linear` (the path before
prepacking), --pad-rows 0 the packed products without padding, for comparison.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: perf/ is on the path, the project root is not
    sys.path.insert(0, str(ROOT))
if __name__ == "__main__":  # before torch is imported (see cpu_runtime)
    from python_backends.llm.cpu_runtime import use_intel_openmp

    use_intel_openmp()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from build_scripts.synthetic.step1_checkpoint import PRESETS, write_step1_checkpoint  # noqa: E402
from python_backends.llm.cpu_runtime import openmp_runtime  # noqa: E402
from python_backends.llm.generator import BatchedGenerator  # noqa: E402
from python_backends.llm.reference import (reference_forward, reference_generate,  # noqa: E402
                                           reference_weights)
from python_backends.llm.sampling import SamplingParams  # noqa: E402
from python_backends.llm.static_decode import new_static_decoder  # noqa: E402
from python_backends.llm.step1_model import load_step1  # noqa: E402
from python_backends.settings import LLM, EditxSettings  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GB = 1e9


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
    return (f"CPU {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
            f"OpenMP {openmp_runtime()}")


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
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


class BandwidthProbe:
    """torch.sum over a 2 GB float32 tensor: GB/s of one pass. Kept allocated, so that a pass
    can run right before each timed decode step (a shared machine's bandwidth moves by 2x
    within minutes: other processes, other virtual machines on the host)."""

    SIZE = 2 << 30

    def __init__(self, device: str):
        self.device = device
        self.data = torch.ones(self.SIZE // 4, dtype=torch.float32, device=device)
        self.data.sum()

    def once(self) -> float:
        sync(self.device)
        start = time.perf_counter()
        self.data.sum()
        sync(self.device)
        return self.SIZE / (time.perf_counter() - start) / GB

    def measure(self, repeats: int) -> tuple[float, float]:
        """Best and median GB/s of `repeats` passes."""
        rates = [self.once() for _ in range(repeats)]
        return max(rates), statistics.median(rates)


def make_generator(model, args, max_active: int) -> BatchedGenerator:
    static = None
    if args.cuda_graphs:
        static = new_static_decoder(model, max_active, args.graph_capacity)
    return BatchedGenerator(model, max_active=max_active, prefill_budget=args.prefill_budget,
                            static_decode=static)


def decode_steps(model, args, batch: int, probe: BandwidthProbe, weight_bytes: int) -> dict:
    """Per-step seconds of decode steps at `batch` (prefill first, untimed), each right after
    a bandwidth pass: its ratio to the roof at that moment's bandwidth."""
    gen = make_generator(model, args, batch)
    warm = 2
    prefill_steps = -(-batch * args.context // args.prefill_budget)  # early ones decode meanwhile
    max_length = args.context + prefill_steps + warm + args.steps + 2
    params = [SamplingParams(seed=i, max_length=max_length) for i in range(batch)]
    for prompt, p in zip(prompts(batch, args.context, seed=1), params):
        gen.submit(prompt, p, None, lambda ids, error: None)
    while gen.pending_count or gen.prefilling_count:
        gen.step()
    for _ in range(warm):
        gen.step()
    times, ratios, rates = [], [], []
    for _ in range(args.steps):
        rate = probe.once()
        sync(args.device)
        start = time.perf_counter()
        gen.step()
        sync(args.device)
        times.append(time.perf_counter() - start)
        rates.append(rate)
        ratios.append(times[-1] / (weight_bytes / (rate * GB)))
    assert gen.active_count == batch, "a sequence ended early"
    gen.stop()
    return {"batch": batch, "best_s": min(times), "median_s": statistics.median(times),
            "worst_s": max(times), "bandwidth_median_gb_s": statistics.median(rates),
            "ratio_best": min(ratios), "ratio_median": statistics.median(ratios),
            "ratio_worst": max(ratios), "static_steps": gen.static_steps}


def prefill(model, args) -> dict:
    """One request per forward against all in one forward; tokens/s and first-id agreement."""
    batch, length = args.prefill_requests, args.prefill_len
    all_prompts = prompts(batch, length, seed=2)
    params = SamplingParams(greedy=True, max_length=length + 2)  # prefill, one id, one decode
    budget = max(args.prefill_budget, batch * length)

    def run(groups) -> tuple[float, list]:
        gen = BatchedGenerator(model, max_active=batch, prefill_budget=budget)
        first, seconds = [], 0.0
        for group in groups:
            done = {}
            for i, prompt in enumerate(group):
                gen.submit(prompt, params, None, lambda ids, error, i=i: done.__setitem__(i, ids))
            sync(args.device)
            start = time.perf_counter()
            gen.step()  # admits the group and prefills it in one forward
            sync(args.device)
            seconds += time.perf_counter() - start
            while len(done) < len(group):  # the decode step that makes the first id final
                gen.step()
            first += [done[i][0] for i in range(len(group))]
        return seconds, first

    run([all_prompts[:1]])  # warm-up
    single, single_ids = run([[p] for p in all_prompts])
    batched, batched_ids = run([all_prompts])
    tokens = batch * length
    return {"requests": batch, "length": length, "single_s": single, "batched_s": batched,
            "single_tokens_per_s": tokens / single, "batched_tokens_per_s": tokens / batched,
            "speedup": single / batched, "same_first_ids": single_ids == batched_ids}


def ours_batch1_ids(model, args) -> list:
    gen = make_generator(model, args, 1)
    prompt = prompts(1, args.context, seed=3)[0]
    return gen.generate([prompt], [SamplingParams(seed=5, max_length=args.context + args.ref_ids + 1)])[0]


def reference(directory: Path, args, probe: BandwidthProbe) -> dict:
    dtype = DTYPES[args.dtype]
    weights = reference_weights(directory, dtype=dtype, device=args.device)
    prompt = prompts(1, args.context, seed=3)[0]
    params = SamplingParams(seed=5, max_length=args.context + args.ref_ids + 1)
    with torch.inference_mode():
        reference_forward(weights, prompt[:8])  # warm-up
        sync(args.device)
        start = time.perf_counter()
        reference_forward(weights, prompt)
        sync(args.device)
        prefill_s = time.perf_counter() - start
        before = probe.once()
        start = time.perf_counter()
        ids = reference_generate(weights, prompt, params)
        sync(args.device)
        total = time.perf_counter() - start
        bandwidth = (before + probe.once()) / 2
    # reference_generate: one prefill, then one single-id forward per id but the last of the
    # ref_ids + 1 it draws (the original drops that last one)
    return {"ids": ids, "step_s": (total - prefill_s) / args.ref_ids,
            "prefill_s": prefill_s, "bandwidth_gb_s": bandwidth}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--weights", help="a Step1 checkpoint directory (overrides --preset)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: every CPU)")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--steps", type=int, default=8, help="timed decode steps per batch size")
    ap.add_argument("--context", type=int, default=128, help="prompt ids before the decode steps")
    ap.add_argument("--prefill-requests", type=int, default=8)
    ap.add_argument("--prefill-len", type=int, default=128)
    ap.add_argument("--prefill-budget", type=int, default=512,
                    help="prompt ids per step in the decode runs (the prefill run packs all)")
    ap.add_argument("--bandwidth-repeats", type=int, default=10)
    ap.add_argument("--ref-ids", type=int, default=6, help="ids the reference generates")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--no-pack", action="store_true", help="plain F.linear (no prepacked weights)")
    ap.add_argument("--pad-rows", type=int, default=EditxSettings.llm_pad_rows,
                    help="packed products of fewer rows padded to this many (0: none)")
    ap.add_argument("--cuda-graphs", action="store_true", help="decode steps as CUDA graphs")
    ap.add_argument("--graph-capacity", type=int, default=1024,
                    help="KV positions of the fixed cache with --cuda-graphs")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.device == "cpu":
        from python_backends.llm.cpu_runtime import cpu_count

        torch.set_num_threads(args.threads or cpu_count())
    elif args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]

    directory = weights_dir(args)
    probe = BandwidthProbe(args.device)
    best_bw, median_bw = probe.measure(args.bandwidth_repeats)
    start = time.perf_counter()
    model = load_step1(directory, device=args.device, dtype=DTYPES[args.dtype],
                       pack=not args.no_pack, pad_rows=args.pad_rows)
    load_s = time.perf_counter() - start
    weight_bytes = model.weight_bytes_per_step()
    roof = weight_bytes / (best_bw * GB)
    config = model.config
    print(f"\nStep1 decode  machine: {machine_name(args.device)}")
    print(f"weights: {directory} (hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
          f"{config.num_attention_heads}/{config.num_attention_groups} heads), {args.dtype} on "
          f"{args.device}, {f'oneDNN-packed, rows padded to {args.pad_rows}' if model.packed else 'plain F.linear'}"
          f"{', CUDA graphs' if args.cuda_graphs else ''}; loaded in {load_s:.1f} s")
    print(f"read bandwidth (sum over 2 GB): best {best_bw:.1f} GB/s, median {median_bw:.1f} GB/s "
          f"of {args.bandwidth_repeats}")
    print(f"weights read per decode step: {weight_bytes / GB:.3f} GB -> roof {roof * 1e3:.1f} ms "
          f"at the best bandwidth")
    results = {"machine": machine_name(args.device), "args": {k: str(v) for k, v in vars(args).items()},
               "bandwidth_gb_s": {"best": best_bw, "median": median_bw},
               "weight_gb_per_step": weight_bytes / GB, "roof_s": roof, "decode": []}

    print("\ndecode steps, each right after a bandwidth pass; x roof = step / (weights / that "
          "pass's bandwidth)")
    print(f"{'':10} {'best ms':>8} {'median ms':>10} {'worst ms':>9} {'GB/s':>6} "
          f"{'x roof best':>12} {'median':>7} {'worst':>6} {'tokens/s':>9}")
    for batch in batches:
        row = decode_steps(model, args, batch, probe, weight_bytes)
        results["decode"].append(row)
        print(f"{'batch ' + str(batch):10} {row['best_s'] * 1e3:8.1f} {row['median_s'] * 1e3:10.1f} "
              f"{row['worst_s'] * 1e3:9.1f} {row['bandwidth_median_gb_s']:6.1f} "
              f"{row['ratio_best']:11.2f}x {row['ratio_median']:6.2f}x {row['ratio_worst']:5.2f}x "
              f"{batch / row['median_s']:9.1f}")

    pre = prefill(model, args)
    results["prefill"] = pre
    print(f"\nprefill {pre['requests']} x {pre['length']} ids: one request per forward "
          f"{pre['single_s']:.2f} s ({pre['single_tokens_per_s']:.1f} tokens/s), all in one forward "
          f"{pre['batched_s']:.2f} s ({pre['batched_tokens_per_s']:.1f} tokens/s): "
          f"{pre['speedup']:.2f}x; same first ids: {'yes' if pre['same_first_ids'] else 'no'}")

    if not args.no_reference:
        ours = ours_batch1_ids(model, args)
        del model
        gc.collect()
        ref = reference(directory, args, probe)
        same = ref["ids"] == ours
        leading = next((i for i, (a, b) in enumerate(zip(ref["ids"], ours)) if a != b),
                       min(len(ref["ids"]), len(ours)))
        ref_ratio = ref["step_s"] / (weight_bytes / (ref["bandwidth_gb_s"] * GB))
        results["reference"] = {"step_s": ref["step_s"], "prefill_s": ref["prefill_s"],
                                "bandwidth_gb_s": ref["bandwidth_gb_s"], "ratio": ref_ratio,
                                "same_ids": same, "leading_equal_ids": leading}
        b1 = next((r for r in results["decode"] if r["batch"] == 1), None)
        vs = f"; ours at batch 1 (median) is {ref['step_s'] / b1['median_s']:.2f}x faster" if b1 else ""
        print(f"\nHF-style reference (batch 1, torch.cat cache, plain weights): decode step "
              f"{ref['step_s'] * 1e3:.1f} ms (mean of {args.ref_ids}), {ref['bandwidth_gb_s']:.1f} GB/s "
              f"around it: {ref_ratio:.2f}x the roof{vs}; prefill {args.context} ids "
              f"{ref['prefill_s']:.2f} s")
        print(f"batch-1 ids equal to the reference's: {'yes' if same else 'no'} (the first "
              f"{leading} of {len(ref['ids'])} seeded ids)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
