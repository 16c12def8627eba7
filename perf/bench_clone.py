"""Benchmark: one voice clone end to end, measured three ways in the same run — (a) the original
algorithm written plainly at batch 1, (b) our fast path in process, (c) our fast path through a
real tritonserver over gRPC (non-stream and stream) — printing seconds per stage, the real-time
factor and the reference/ours ratio. Not a test: numbers go to perf/RESULTS.md.

    .venv/bin/python perf/bench_clone.py --preset tiny
    .venv/bin/python perf/bench_clone.py --preset full --llm-dtype bfloat16 --threads 2
    .venv/bin/python perf/bench_clone.py --preset full --device cuda --skip-reference

The prompt is an espeak-ng clip with its transcript; the target text is fixed. The synthetic
LLM never says <|EOT|>, so --max-new-tokens bounds it: N new ids, the last one dropped as the
original does, give 3·ceil((N−1)/5) token rows = 960 samples each at 24 kHz (126 → 3.0 s).

(a) ReferenceTokenizer → speaker name + clone_prompt_ids → reference_generate (HF-style loop) →
    reshape → reference_flow (CPU, fp32, per-layer formulas) → reference_hift, with
    prompt_mel_reference (numpy) and the CAM++ ONNX (the original runs that ONNX too: the
    same call serves both paths).
(b) FastTokenizer, PromptMel, clone_request_ids, BatchedGenerator, Token2Wav; (a) and (b)
    share the loaded LLM / flow / HiFT tensors.
(c) a repository built with --editx and no prompt cache (every call runs every stage), stage
    seconds from the server's `timing` output; the stream's first chunk latency as the client
    sees it.
Before timing, each path runs once with --warmup-tokens new ids (0: no warm-up); the server's
warm-up uses another clip.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

from build_scripts.espeak_clips import speech_with_transcript
from build_scripts.make_synthetic_editx import build as build_editx
from build_scripts.make_synthetic_weights import build as build_tokenizer_weights
from perf.bench_llm import machine_name, sync
from python_backends.decoder.hift import reference_hift
from python_backends.decoder.prompt_mel import PromptMel, prompt_mel_reference, round_bf16
from python_backends.decoder.reference import reference_flow
from python_backends.decoder.speaker_embedding import SpeakerEmbedder
from python_backends.decoder.token2wav import Token2Wav
from python_backends.decoder.token_reshape import reshape_token_ids
from python_backends.llm.generator import BatchedGenerator
from python_backends.llm.prompt_builder import (channel_major, clone_prompt_ids,
                                                clone_request_ids, speaker_name)
from python_backends.llm.reference import reference_generate, reference_weights
from python_backends.llm.sampling import SamplingParams
from python_backends.llm.step1_model import Step1Model, load_step1
from python_backends.llm.text_tokenizer import TextTokenizer
from python_backends.tokenizer.pipeline import FastTokenizer
from python_backends.decoder.prompt_audio import prompt_audio
from python_backends.tokenizer.reference import ReferenceTokenizer
from python_backends.settings import DECODER, EditxSettings, TokenizerSettings

TARGET_TEXT = "Triton serves this cloned voice, one request after another."
PROMPT_SEED = 3
STAGES = ("tokenizer", "prompt_mel", "speaker_embedding", "prompt_encoder", "prompt_builder",
          "llm", "flow", "hift", "token2wav")
PROMPT_ENCODER = ("tokenizer", "prompt_mel", "speaker_embedding")  # one server stage


@dataclasses.dataclass(frozen=True)
class Clip:
    audio: np.ndarray
    rate: int
    transcript: str
    text: str = TARGET_TEXT


@dataclasses.dataclass
class CloneRun:
    stages: dict  # stage → seconds
    total: float
    wave: np.ndarray
    llm_ids: list | None = None
    first_chunk: float | None = None

    @property
    def output_seconds(self) -> float:
        return len(self.wave) / DECODER.output_sample_rate

    @property
    def rtf(self) -> float:
        return self.total / self.output_seconds


class StageTimer:
    """Wall seconds per named stage, the device synchronised on both ends."""

    def __init__(self, device: str):
        self.device = device
        self.stages: dict = {}
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        sync(self.device)
        start = time.perf_counter()
        yield
        sync(self.device)
        self.stages[name] = time.perf_counter() - start

    def run(self, wave: np.ndarray, llm_ids: list | None) -> CloneRun:
        stages = dict(self.stages)
        if all(s in stages for s in PROMPT_ENCODER):
            stages["prompt_encoder"] = sum(stages[s] for s in PROMPT_ENCODER)
        if "flow" in stages:
            stages["token2wav"] = stages["flow"] + stages["hift"]
        return CloneRun(stages, time.perf_counter() - self.start, wave, llm_ids)


@dataclasses.dataclass(frozen=True)
class Generation:
    max_new_tokens: int
    seed: int
    greedy: bool

    def params(self, prompt_len: int) -> SamplingParams:
        """What the server's llm model makes of max_new_tokens: max_length = prompt + N."""
        return SamplingParams(greedy=self.greedy, seed=self.seed,
                              max_length=prompt_len + self.max_new_tokens)

    def fewer(self, tokens: int) -> "Generation":
        return dataclasses.replace(self, max_new_tokens=tokens)


class Models:
    """The weights both in-process paths share (one LLM / flow / HiFT in memory)."""

    def __init__(self, tokenizer: TokenizerSettings, editx: EditxSettings):
        self.tokenizer_settings, self.editx = tokenizer, editx
        self.step1: Step1Model = load_step1(editx.llm_dir, editx.device, getattr(torch, editx.llm_dtype))
        self.token2wav = Token2Wav.from_settings(editx)
        self.embedder = SpeakerEmbedder(editx.cosyvoice_dir / "campplus.onnx", editx.num_threads)
        self.text = TextTokenizer(editx.text_tokenizer_path)

    def prompt(self, clip: Clip) -> np.ndarray:
        """Mono, peak capped at 0.6: what the tokenizer, mel and CAM++ read (spec §1.1)."""
        return prompt_audio(clip.audio, clip.rate, 1, self.editx)


class ReferenceClone:
    """(a) The original algorithm, batch 1."""

    def __init__(self, models: Models):
        self.m = models
        self.tokenizer = ReferenceTokenizer(models.tokenizer_settings)
        self.weights = reference_weights(models.step1)

    def __call__(self, clip: Clip, gen: Generation) -> CloneRun:
        m, t = self.m, StageTimer(self.m.editx.device)
        audio = m.prompt(clip)
        with t("tokenizer"):
            tokens = self.tokenizer(audio, clip.rate)
        with t("prompt_mel"):
            mel = round_bf16(torch.from_numpy(prompt_mel_reference(audio, clip.rate)))
        with t("speaker_embedding"):
            spk = torch.from_numpy(m.embedder(audio, clip.rate))
        with t("prompt_builder"):
            speaker = speaker_name(clip.transcript, channel_major(clip.audio, 1))
            ids = clone_prompt_ids(m.text, speaker, clip.transcript, tokens.token_str, clip.text,
                                   m.editx.inner_bos)
        with t("llm"):
            out = reference_generate(self.weights, ids, gen.params(len(ids)))
        flow, hift = m.token2wav.flow, m.token2wav.hift
        with t("flow"):
            target = torch.from_numpy(reshape_token_ids(out))
            prompt = torch.from_numpy(reshape_token_ids(tokens.merged_ids))
            frames = flow.model.up_rate * len(prompt)
            mel = F.interpolate(mel.T[None], size=frames, mode="nearest")[0].T
            out_mel = reference_flow(flow.model, target, prompt, mel, spk, flow.noise.cpu())
        with t("hift"):
            wave = reference_hift(hift, out_mel, gen.seed).float().cpu().numpy()
        return t.run(wave, out)


class OursInProcess:
    """(b) The fast path in process, each stage as the server's model runs it."""

    def __init__(self, models: Models):
        self.m = models
        self.tokenizer = FastTokenizer(models.tokenizer_settings)
        self.mel = PromptMel(models.editx.device)
        self.generator = BatchedGenerator(models.step1, max_active=1)

    def __call__(self, clip: Clip, gen: Generation) -> CloneRun:
        m, t = self.m, StageTimer(self.m.editx.device)
        audio = m.prompt(clip)
        with t("tokenizer"):
            tokens = self.tokenizer([(audio, clip.rate)])[0]
        with t("prompt_mel"):
            mel = self.mel(audio, clip.rate)
        with t("speaker_embedding"):
            spk = m.embedder(audio, clip.rate)
        with t("prompt_builder"):
            ids, _ = clone_request_ids(m.text, m.editx, clip.transcript, clip.text,
                                       tokens.token_str, clip.audio, 1)
        with t("llm"):
            out = self.generator.generate([ids], [gen.params(len(ids))])[0]
        with t("token2wav"):
            wave = m.token2wav.batch([{"target_ids": out, "prompt_ids": tokens.merged_ids,
                                       "prompt_mel": mel, "speaker_embedding": spk,
                                       "seed": gen.seed}])[0]
        return t.run(wave, out)


def measure(pipeline, clip: Clip, gen: Generation, warmup_tokens: int) -> CloneRun:
    if warmup_tokens:
        pipeline(clip, gen.fewer(min(warmup_tokens, gen.max_new_tokens)))
    return pipeline(clip, gen)


def in_process(args, tokenizer: TokenizerSettings, editx: EditxSettings, clip: Clip,
               gen: Generation) -> dict:
    """{"reference": CloneRun, "ours": CloneRun}; the models are freed on return."""
    models = Models(tokenizer, editx)
    runs = {"ours": measure(OursInProcess(models), clip, gen, args.warmup_tokens)}
    if not args.skip_reference:
        runs["reference"] = measure(ReferenceClone(models), clip, gen, args.warmup_tokens)
    return runs


def via_triton(args, tokenizer_weights: Path, editx_dir: Path, clip: Clip, warm: Clip,
               gen: Generation) -> dict:
    """{"triton": CloneRun, "triton_stream": CloneRun} through a fresh server."""
    from build_scripts.build_repository import RepositoryOptions, build as build_repository
    from build_scripts.serve import TritonServer
    from client.clone_client import CloneClient

    options = RepositoryOptions(device="gpu" if args.device.startswith("cuda") else "cpu",
                                num_threads=args.threads, **stage_dtypes(args),
                                prompt_cache_entries=0)
    repo = build_repository(tokenizer_weights, ROOT / "build" / "bench_clone_repository", options,
                            editx=editx_dir)
    runs = {}
    with TritonServer(repo) as server, CloneClient(server.grpc_url, protocol="grpc") as client:
        def clone(c: Clip, g: Generation, stream: bool) -> CloneRun:
            start = time.perf_counter()
            wave, _ = client.clone(c.audio, c.rate, c.transcript, c.text, stream=stream,
                                   seed=g.seed, greedy=g.greedy, max_new_tokens=g.max_new_tokens)
            total = time.perf_counter() - start
            stages = {k: v for k, v in client.last_timing.items() if k != "prompt_cached"}
            return CloneRun(stages, total, wave, first_chunk=client.first_chunk_s if stream else None)

        if args.warmup_tokens:
            clone(warm, gen.fewer(min(args.warmup_tokens, gen.max_new_tokens)), False)
        runs["triton"] = clone(clip, gen, False)
        runs["triton_stream"] = clone(clip, gen, True)
    return runs


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float | None:
    return float(np.max(np.abs(a - b))) if a.shape == b.shape and a.size else None


def first_difference(a: list, b: list) -> int | None:
    """Index of the first differing LLM id (None: identical)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


DTYPE_STAGES = ("llm", "flow", "hift")  # each has its own compute dtype


def stage_dtypes(args) -> dict:
    """{llm_dtype, flow_dtype, hift_dtype} as EditxSettings / RepositoryOptions take them."""
    return {f"{stage}_dtype": getattr(args, f"{stage}_dtype") for stage in DTYPE_STAGES}


def checks(runs: dict, gen: Generation, llm_dtype: str) -> dict:
    out = {"expect_identical_ids": gen.greedy and llm_dtype == "float32"}
    ref, ours = runs.get("reference"), runs["ours"]
    if ref is not None:
        diff = first_difference(ref.llm_ids, ours.llm_ids)
        out.update(llm_ids_identical=diff is None, llm_ids_first_difference=diff,
                   wave_max_abs_diff_reference_ours=max_abs_diff(ref.wave, ours.wave))
    if "triton" in runs:  # triton_stream runs the streaming decoder: other audio by design
        out["wave_max_abs_diff_ours_triton"] = max_abs_diff(ours.wave, runs["triton"].wave)
    return out


def table(runs: dict) -> str:
    """Seconds per stage (columns: the paths), total, RTF, reference/ours ratios."""
    names = [n for n in ("reference", "ours", "triton", "triton_stream") if n in runs]
    ratio_of = [n for n in names if n != "reference"] if "reference" in runs else []
    head = f"{'stage':18}" + "".join(f"{n:>14}" for n in names) + "".join(
        f"{'ref/' + n:>20}" for n in ratio_of)
    lines = [head, "-" * len(head)]

    def row(label: str, values: list, ratios: list, fmt: str = "{:14.3f}") -> None:
        cells = "".join(fmt.format(v) if v is not None else f"{'-':>14}" for v in values)
        cells += "".join(f"{r:19.2f}x" if r else f"{'-':>20}" for r in ratios)
        lines.append(f"{label:18}{cells}")

    def ratios(get) -> list:
        ref = get(runs["reference"]) if ratio_of else None
        return [ref / get(runs[n]) if ref and get(runs[n]) else None for n in ratio_of]

    for stage in STAGES:
        if any(stage in runs[n].stages for n in names):
            row(stage, [runs[n].stages.get(stage) for n in names],
                ratios(lambda r, s=stage: r.stages.get(s)))
    row("total", [runs[n].total for n in names], ratios(lambda r: r.total))
    row("output seconds", [runs[n].output_seconds for n in names], [None] * len(ratio_of))
    row("RTF", [runs[n].rtf for n in names], ratios(lambda r: r.rtf))
    if "triton_stream" in runs:
        row("first chunk", [runs[n].first_chunk for n in names], [None] * len(ratio_of))
    return "\n".join(lines)


def summary(runs: dict) -> dict:
    return {name: {"stages_s": {k: round(v, 4) for k, v in r.stages.items()},
                   "total_s": round(r.total, 4), "output_s": round(r.output_seconds, 4),
                   "rtf": round(r.rtf, 4), "first_chunk_s": r.first_chunk,
                   "llm_ids": len(r.llm_ids) if r.llm_ids is not None else None}
            for name, r in runs.items()}


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--prompt-seconds", type=float, default=8.0)
    ap.add_argument("--max-new-tokens", type=int, default=126)
    ap.add_argument("--seed", type=int, default=7, help="LLM sampling and HiFT source seed")
    ap.add_argument("--greedy", action="store_true", help="argmax instead of seeded sampling")
    for stage in DTYPE_STAGES:  # fp32 by default: the reference shares these tensors, ids must match
        ap.add_argument(f"--{stage}-dtype", default="float32", choices=["float32", "bfloat16"],
                        help=f"{stage} compute dtype (reference_flow is always fp32; the original "
                             "runs a bfloat16 LLM and a float32 decoder)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch / onnxruntime threads here and per model in the server "
                         "(0: library defaults)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--warmup-tokens", type=int, default=10)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = ROOT / "build" / "weights"
    tokenizer_weights = build_tokenizer_weights(args.preset, weights / args.preset)
    editx_dir = build_editx(args.preset, weights / f"{args.preset}-editx")
    tokenizer = TokenizerSettings(weights_dir=str(tokenizer_weights), device=args.device,
                                  num_threads=args.threads)
    editx = EditxSettings(editx_dir=str(editx_dir), device=args.device,
                          num_threads=args.threads, **stage_dtypes(args))
    audio, rate, transcript = speech_with_transcript(args.prompt_seconds, seed=PROMPT_SEED)
    clip = Clip(audio, rate, transcript)
    gen = Generation(args.max_new_tokens, args.seed, args.greedy)

    runs = in_process(args, tokenizer, editx, clip, gen)
    gc.collect()  # the server loads its own copy of the weights
    if not args.skip_server:
        warm_audio, warm_rate, warm_text = speech_with_transcript(args.prompt_seconds,
                                                                  seed=PROMPT_SEED + 1)
        runs.update(via_triton(args, tokenizer_weights, editx_dir, clip,
                               Clip(warm_audio, warm_rate, warm_text), gen))
    runs = {n: runs[n] for n in ("reference", "ours", "triton", "triton_stream") if n in runs}
    result = {"machine": machine_name(args.device), "preset": args.preset, **stage_dtypes(args),
              "device": args.device, "threads": args.threads,
              "prompt_seconds": args.prompt_seconds, "max_new_tokens": args.max_new_tokens,
              "sampling": "greedy" if args.greedy else f"seeded {args.seed}",
              "checks": checks(runs, gen, args.llm_dtype), "runs": summary(runs)}

    print(f"\nvoice clone end to end  machine: {result['machine']}")
    dtypes = ", ".join(f"{s} {getattr(args, s + '_dtype')}" for s in DTYPE_STAGES)
    print(f"preset {args.preset}, {dtypes}, device {args.device}, prompt "
          f"{args.prompt_seconds:g} s espeak-ng, {args.max_new_tokens} new LLM ids "
          f"({result['sampling']}); seconds per stage, RTF = compute s / output s")
    print(table(runs))
    for key, value in result["checks"].items():
        print(f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
