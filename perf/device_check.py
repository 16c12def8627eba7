"""GPU checks and timings in ONE run on a lent GPU (the `device` tool), for perf/RESULTS.md.

    python perf/device_check.py --prepare DATA      # here (CPU): inputs + CPU expectations
    python perf/device_check.py --run DATA --out OUT  # on the GPU machine

`--prepare` copies the tiny synthetic weights and test clips into DATA and computes the CPU
results the GPU must reproduce (vq02 tokens of the fast path, identical to the reference on
CPU by tests/test_stages.py). `--run`:
  1. correctness on tiny weights: vq02 tokens on CUDA (torch fbank + encoder) = CPU tokens;
     Step1 greedy ids on CUDA (fp32, batched) = the plain reference on CPU; token2wav on
     CUDA vs CPU (max |diff|).
     Step1 decode steps as CUDA graphs vs eager: the same ids (greedy, seeded, batched with
     padded rows, alone), tokens/s on the tiny model;
  2. timings on full-size random weights: the vq02 encoder core (10 s clips, batch 1 / 16,
     fp32 / TF32 / bf16), the Step1 LLM (perf/bench_llm.py: decode steps at batch 1, 4, 16 vs
     the roof, prefill single vs batched, the HF-style batch-1 reference; then again with
     --cuda-graphs), token2wav (10 s of speech, batch 1 / 8, fp32 / bf16).
Everything is printed as JSON lines and written to OUT/device_check.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS: list[dict] = []
DEVICE = "cuda:0"


def record(**fields) -> None:
    RESULTS.append(fields)
    print(json.dumps(fields), flush=True)


def timed(fn, repeats: int = 3, sync: bool = True) -> float:
    """Median seconds of `repeats` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if sync and torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if sync and torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# ------------------------------------------------------------------ prepare (CPU, here)

def prepare(data: Path) -> None:
    from build_scripts.espeak_clips import speech_of_duration
    from build_scripts.make_synthetic_editx import build as build_editx
    from build_scripts.make_synthetic_weights import build as build_weights
    from python_backends.tokenizer.preprocess import preprocess
    from python_backends.settings import TokenizerSettings
    from python_backends.tokenizer.vq02 import Vq02Tokenizer

    data.mkdir(parents=True, exist_ok=True)
    for name, build in (("tiny", build_weights), ("tiny-editx", build_editx)):
        src = build("tiny", ROOT / "build" / "weights" / name)
        shutil.copytree(src, data / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".synthetic_weights.lock"))
    settings = TokenizerSettings(weights_dir=str(data / "tiny"), dither=0.0)
    clips = [preprocess(*speech_of_duration(s, seed=seed), settings)
             for s, seed in ((3.0, 2), (10.0, 3), (6.5, 5))]
    np.savez(data / "clips_16k.npz", *clips)
    codes = Vq02Tokenizer.from_settings(settings)(clips)
    (data / "expected.json").write_text(json.dumps({"vq02": [c.tolist() for c in codes]}))
    print(f"prepared {data}")


# ------------------------------------------------------------------ run (GPU machine)

def check_vq02(data: Path) -> None:
    from python_backends.settings import TokenizerSettings
    from python_backends.tokenizer.vq02 import Vq02Tokenizer

    clips = list(np.load(data / "clips_16k.npz").values())
    expected = json.loads((data / "expected.json").read_text())["vq02"]
    torch.backends.cuda.matmul.allow_tf32 = False
    tok = Vq02Tokenizer.from_settings(TokenizerSettings(weights_dir=str(data / "tiny"), dither=0.0,
                                                        device=DEVICE))
    got = tok(clips)
    same = [int(np.sum(g == np.asarray(e))) for g, e in zip(got, expected)]
    record(check="vq02_tokens_cuda_vs_cpu", identical=all(s == len(e) for s, e in zip(same, expected)),
           tokens=[len(e) for e in expected], equal=same)


def check_llm(data: Path) -> None:
    from python_backends.llm.generator import BatchedGenerator
    from python_backends.llm.reference import reference_generate
    from python_backends.llm.sampling import SamplingParams
    from python_backends.llm.step1_model import load_step1

    editx = data / "tiny-editx"
    prompts = [[1, 4, 100 + i, 200, 65541 + 7 * i, 66536, 3, 4] + list(range(65600, 65600 + 3 * i))
               for i in range(5)]
    params = SamplingParams(greedy=True, max_length=max(map(len, prompts)) + 24)
    want = [reference_generate(editx, p, params) for p in prompts]
    gen = BatchedGenerator(load_step1(editx, device=DEVICE), max_active=4)
    got = gen.generate(prompts, [params] * len(prompts))
    record(check="llm_greedy_cuda_batched_vs_cpu_reference", identical=got == want,
           equal_sequences=sum(g == w for g, w in zip(got, want)), sequences=len(prompts))
    sampled = [SamplingParams(seed=11 + i, max_length=params.max_length) for i in range(len(prompts))]
    a = gen.generate(prompts, sampled)
    b = [gen.generate([p], [s])[0] for p, s in zip(prompts, sampled)]
    record(check="llm_seeded_sampling_cuda_batched_vs_alone", identical=a == b)
    check_llm_graphs(gen.model, prompts, [params] * len(prompts), sampled)


def check_llm_graphs(model, prompts, greedy, sampled) -> None:
    """Decode steps replayed as CUDA graphs (python_backends/llm/static_decode.py) against the
    eager steps: the same ids, greedy and seeded, batched (5 rows: the 8-row bucket, 3 padded)
    and alone (bucket 1); tokens/s of both on the tiny model (launch-bound, so it shows what
    the graphs save)."""
    from python_backends.llm.generator import BatchedGenerator
    from python_backends.llm.sampling import SamplingParams
    from python_backends.llm.static_decode import new_static_decoder

    eager = BatchedGenerator(model, max_active=8)
    decoder = new_static_decoder(model, max_active=8, capacity=256)
    graphs = BatchedGenerator(model, max_active=8, static_decode=decoder)
    for name, params in (("greedy", greedy), ("seeded", sampled)):
        want = eager.generate(prompts, params)
        got = graphs.generate(prompts, params)
        alone = [graphs.generate([p], [q])[0] for p, q in zip(prompts, params)]
        record(check=f"llm_cuda_graphs_vs_eager_{name}", identical=got == want,
               alone_identical=alone == want, static_steps=graphs.static_steps,
               replays=decoder.replays, captured=decoder.captured)
    for name, gen in (("eager", eager), ("graphs", graphs)):
        long = [SamplingParams(seed=i, max_length=len(prompts[0]) + 129) for i in range(4)]
        for batch in (1, 4):
            # timed() warms up first: that call captures the graphs
            seconds = timed(lambda: gen.generate(prompts[:batch], long[:batch]), repeats=1)
            record(bench="llm_tiny_decode_cuda", path=name, batch=batch,
                   tokens_per_s=round(batch * 128 / seconds, 1))


def token2wav_items(rows_target: int, rows_prompt: int, count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)

    def ids(rows):
        out = []
        for _ in range(rows // 3):
            out += list(65536 + rng.integers(0, 1024, 2)) + list(65536 + 1024 + rng.integers(0, 4096, 3))
        return np.array(out)

    return [dict(target_ids=ids(rows_target), prompt_ids=ids(rows_prompt),
                 prompt_mel=rng.standard_normal((2 * rows_prompt + 3, 80)).astype(np.float32),
                 speaker_embedding=rng.standard_normal(192).astype(np.float32), seed=i)
            for i in range(count)]


def token2wav_for(cosy: Path, device: str, dtype: str):
    from python_backends.decoder.token2wav import Token2Wav
    from python_backends.settings import EditxSettings

    return Token2Wav.from_settings(EditxSettings(editx_dir=str(cosy.parent), device=device,
                                               flow_dtype=dtype, hift_dtype=dtype))


def check_token2wav(data: Path) -> None:
    cosy = data / "tiny-editx" / "CosyVoice-300M-25Hz"
    items = token2wav_items(30, 15, 2)
    cpu = token2wav_for(cosy, "cpu", "float32").batch(items)
    gpu = token2wav_for(cosy, DEVICE, "float32").batch(items)
    record(check="token2wav_tiny_cuda_vs_cpu", lengths=[len(w) for w in gpu],
           max_abs_diff=float(max(np.abs(a - b).max() for a, b in zip(cpu, gpu))),
           peak=float(max(np.abs(w).max() for w in cpu)))


def time_vq02_core() -> None:
    from build_scripts.synthetic.paraformer_dir import build_config
    from build_scripts.synthetic.presets import PRESETS
    from python_backends.tokenizer.chunk_encoder import ChunkedEncoderQuantizer

    conf = build_config(PRESETS["full"].paraformer)["encoder_conf"]
    torch.manual_seed(0)
    model = ChunkedEncoderQuantizer(conf, 560, np.random.default_rng(0).standard_normal(
        (1024, 512)).astype(np.float32)).eval().to(DEVICE)
    frames = 167  # 10 s: 1000 fbank frames / LFR 6
    for batch in (1, 16):
        feats = torch.randn(frames * batch, 560, device=DEVICE)
        lengths = [frames] * batch
        for mode in ("fp32", "tf32", "bf16"):
            torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
            torch.backends.cudnn.allow_tf32 = mode == "tf32"

            def run():
                with torch.inference_mode(), torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16,
                                                            enabled=mode == "bf16"):
                    model.encode(feats, lengths)

            seconds = timed(run, repeats=5)
            record(bench="vq02_encoder_core_full", batch=batch, audio_seconds_each=10, mode=mode,
                   seconds=round(seconds, 4), audio_seconds_per_second=round(10 * batch / seconds, 1))
    torch.backends.cuda.matmul.allow_tf32 = False


def time_llm(work: Path) -> None:
    """perf/bench_llm.py on full-size bf16 weights: eager, then decode steps as CUDA graphs
    (batch 1 / 4 / 16; target: batch 1 >= 150 tokens/s on an H100-class GPU)."""
    from build_scripts.synthetic.step1_checkpoint import write_step1_checkpoint

    start = time.perf_counter()
    write_step1_checkpoint(work / "step1_full", "full", 0)
    record(stage="step1_full_written", seconds=round(time.perf_counter() - start, 1))
    for extra in ([], ["--cuda-graphs", "--no-reference"]):
        out = subprocess.run([sys.executable, str(ROOT / "perf" / "bench_llm.py"), "--weights",
                              str(work / "step1_full"), "--device", DEVICE, "--dtype", "bfloat16",
                              "--steps", "32", "--context", "256", "--batches", "1,4,16",
                              "--json", str(work / f"bench_llm{'_graphs' if extra else ''}.json")]
                             + extra, capture_output=True, text=True, timeout=300)
        record(bench="llm_full_bench_llm", args=extra, returncode=out.returncode,
               stdout=out.stdout[-4000:], stderr=out.stderr[-1500:])


def time_token2wav(work: Path) -> None:
    from build_scripts.synthetic.flow_checkpoint import base_yaml_sections, flow_yaml_section, write_flow
    from build_scripts.synthetic.hift_checkpoint import hift_yaml_section, write_hift
    from python_backends.decoder.cosyvoice_yaml import write_cosyvoice_yaml
    from python_backends.settings import COSYVOICE_DIR

    cosy = work / "editx_full" / COSYVOICE_DIR
    write_cosyvoice_yaml(cosy / "cosyvoice.yaml", {**base_yaml_sections(), "flow": flow_yaml_section("full"),
                                                   "hift": hift_yaml_section("full")})
    write_flow(cosy, "full", 0)
    write_hift(cosy, "full", 0)
    for dtype in ("float32", "bfloat16"):
        decoder = token2wav_for(cosy, DEVICE, dtype)
        for batch in (1, 8):
            items = token2wav_items(252, 150, batch)  # 10.08 s of speech each, 6 s prompt
            seconds = timed(lambda: decoder.batch(items), repeats=3)
            record(bench="token2wav_full", dtype=dtype, batch=batch, speech_seconds_each=10.08,
                   seconds=round(seconds, 4), real_time_factor=round(seconds / (10.08 * batch), 4))
        del decoder
        torch.cuda.empty_cache()


def run(data: Path, out: Path, full: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record(machine=platform.node(), torch=torch.__version__, cuda=torch.version.cuda,
           gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    work = Path("/tmp/device_check")
    work.mkdir(parents=True, exist_ok=True)
    for step in (check_vq02, check_llm, check_token2wav):
        try:
            step(data)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other checks
            record(check=step.__name__, error=f"{type(exc).__name__}: {exc}")
        (out / "device_check.json").write_text(json.dumps(RESULTS, indent=1))
    for step in () if not full else (time_vq02_core, lambda: time_token2wav(work), lambda: time_llm(work)):
        try:
            step()
        except Exception as exc:  # noqa: BLE001
            record(bench=getattr(step, "__name__", "step"), error=f"{type(exc).__name__}: {exc}")
        (out / "device_check.json").write_text(json.dumps(RESULTS, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepare", type=Path)
    ap.add_argument("--run", type=Path)
    ap.add_argument("--out", type=Path, default=Path("build/device_check"))
    ap.add_argument("--device", default=DEVICE, help="cpu: a smoke test of the checks here")
    ap.add_argument("--checks-only", action="store_true", help="skip the full-size timings")
    args = ap.parse_args()
    globals()["DEVICE"] = args.device
    if args.prepare:
        prepare(args.prepare)
    if args.run:
        run(args.run, args.out, full=not args.checks_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
