"""Where a Step1 decode step spends its time: torch.profiler over BatchedGenerator (batch 1)
and the HF-style reference, on one device. For perf/RESULTS.md's LLM notes.

    python perf/profile_llm.py --weights DIR --device cuda:0 --dtype bfloat16 [--new-tokens 32]
    python perf/profile_llm.py --weights DIR --device cpu --dtype bfloat16 --pack  # no reference

On a CPU it runs on Intel OpenMP (python_backends/llm/cpu_runtime.py), as llm_stream does.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from python_backends.llm.cpu_runtime import use_intel_openmp  # noqa: E402

use_intel_openmp()  # before torch is imported

import torch  # noqa: E402

from python_backends.llm.generator import BatchedGenerator  # noqa: E402
from python_backends.llm.reference import reference_generate  # noqa: E402
from python_backends.llm.sampling import SamplingParams  # noqa: E402
from python_backends.llm.step1_model import load_step1  # noqa: E402
from python_backends.settings import EditxSettings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--pack", action="store_true",
                    help="prepacked oneDNN weights (CPU bf16); the reference is then skipped")
    ap.add_argument("--pad-rows", type=int, default=EditxSettings.llm_pad_rows,
                    help="with --pack: products of fewer rows padded to this many (0: none)")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    model = load_step1(args.weights, device=args.device, dtype=dtype, pack=args.pack, pad_rows=args.pad_rows)
    prompt = [1, 4] + [65536 + (7 * i) % 5120 for i in range(args.prompt_len - 2)]
    params = SamplingParams(seed=1, max_length=args.prompt_len + args.new_tokens)
    gen = BatchedGenerator(model, max_active=16)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if args.device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sort = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    runs = [("BatchedGenerator", lambda: gen.generate([prompt], [params]))]
    if not model.packed:  # the reference needs the dense weights
        runs.append(("reference", lambda: reference_generate(model, prompt, params)))
    for name, run in runs:
        with torch.inference_mode():
            run()
            with torch.profiler.profile(activities=activities) as prof:
                start = time.perf_counter()
                run()
                seconds = time.perf_counter() - start
        print(f"== {name}: {args.new_tokens} new ids in {seconds:.2f} s "
              f"({args.new_tokens / seconds:.1f} ids/s)")
        print(prof.key_averages().table(sort_by=sort, row_limit=14))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main()
