"""Synthetic Step-Audio-EditX weights (LLM + decoder) with the release's file layout.

    python -m build_scripts.make_synthetic_editx --preset tiny|full --out DIR [--seed N] [--force]

writes
    DIR/config.json, model-00001.safetensors, model.safetensors.index.json   Step1 LLM (bf16)
    DIR/tokenizer.model, tokenizer_config.json        SentencePiece text tokenizer (<audio_N> = 65536+N)
    DIR/CosyVoice-300M-25Hz/cosyvoice.yaml, flow.pt, flow_noise.npy, hift.pt, campplus.onnx
    DIR/synthetic_editx.json                          manifest (preset, seed, sizes, sha256), written last

`full` has the release's dimensions (Step1 3.5 B parameters = 7 GB, flow ~154 M, HiFT ~21 M);
`tiny` is for tests. flow_noise.npy is the flow's fixed start noise, which the release does not
ship (step_audio_internals.md §3.3: dump it once from a reference process for real weights).
Same preset + seed → same bytes; a complete DIR written by the same generator code is left
alone unless --force; files we did not write are never overwritten without --force.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from build_scripts.synthetic import manifest as mf
from build_scripts.synthetic.campplus_onnx import write_campplus
from build_scripts.synthetic.flow_checkpoint import base_yaml_sections, flow_yaml_section, write_flow
from build_scripts.synthetic.hift_checkpoint import hift_yaml_section, write_hift
from build_scripts.synthetic.step1_checkpoint import write_step1_checkpoint
from build_scripts.synthetic.text_tokenizer import write_text_tokenizer
from python_backends.decoder.cosyvoice_yaml import write_cosyvoice_yaml
from python_backends.file_io import log_stage
from python_backends.settings import COSYVOICE_DIR

LOG = logging.getLogger("synthetic_editx")
MANIFEST = "synthetic_editx.json"
PRESETS = ("tiny", "full")
FORMAT = 1
FINGERPRINT_SOURCES = ("build_scripts/make_synthetic_editx.py", "build_scripts/synthetic/manifest.py",
                       "build_scripts/synthetic/step1_checkpoint.py",
                       "build_scripts/synthetic/text_tokenizer.py",
                       "build_scripts/synthetic/flow_checkpoint.py",
                       "build_scripts/synthetic/hift_checkpoint.py",
                       "build_scripts/synthetic/campplus_onnx.py",
                       "build_scripts/synthetic/random_init.py", "python_backends/settings.py",
                       "python_backends/llm/step1_config.py", "python_backends/llm/spm_proto.py",
                       "python_backends/llm/prompt_templates.py",
                       "python_backends/decoder/*.py")
FILES = ("config.json", "model-00001.safetensors", "model.safetensors.index.json", "tokenizer.model",
         "tokenizer_config.json") + tuple(f"{COSYVOICE_DIR}/{name}" for name in (
             "cosyvoice.yaml", "flow.pt", "flow_noise.npy", "hift.pt", "campplus.onnx"))


def _header(preset: str, seed: int) -> dict:
    return {"format": FORMAT, "generator": "build_scripts/make_synthetic_editx.py",
            "generator_fingerprint": mf.fingerprint(FINGERPRINT_SOURCES), "preset": preset,
            "seed": int(seed)}


def is_complete(out: Path, preset: str, seed: int) -> bool:
    return mf.is_complete(out, MANIFEST, _header(preset, seed), FILES)


def _build_locked(preset: str, out: Path, seed: int, force: bool) -> None:
    header = _header(preset, seed)
    if not force and is_complete(out, preset, seed):
        LOG.info("stage=skip preset=%s seed=%d out=%s (already complete)", preset, seed, out)
        return
    if not force:
        mf.guard_foreign_files(out, MANIFEST, FILES)
    started = time.perf_counter()
    mf.begin(out, MANIFEST, header)
    cosy = out / COSYVOICE_DIR
    with log_stage(LOG, "step1_llm", preset=preset):
        write_step1_checkpoint(out, preset, seed)
    with log_stage(LOG, "text_tokenizer"):
        write_text_tokenizer(out, seed)
    with log_stage(LOG, "cosyvoice_yaml"):
        write_cosyvoice_yaml(cosy / "cosyvoice.yaml", {**base_yaml_sections(),
                                                       "flow": flow_yaml_section(preset),
                                                       "hift": hift_yaml_section(preset)})
    with log_stage(LOG, "flow"):
        write_flow(cosy, preset, seed)
    with log_stage(LOG, "hift"):
        write_hift(cosy, preset, seed)
    with log_stage(LOG, "campplus"):
        write_campplus(cosy, preset, seed)
    with log_stage(LOG, "manifest"):
        mf.finish(out, MANIFEST, header, FILES)
    LOG.info("stage=done seconds=%.2f preset=%s seed=%d out=%s", time.perf_counter() - started,
             preset, seed, out)


def build(preset: str, out: Path, seed: int = 0, force: bool = False) -> Path:
    """Write the synthetic EditX weights of `preset` into `out` (skipped when complete) → out."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out = Path(out)
    with mf.locked(out):
        _build_locked(preset, out, int(seed), force)
    return out


def main(argv: list[str] | None = None) -> int:
    return mf.main(argv, __doc__.split("\n\n")[0], PRESETS, build, LOG)


if __name__ == "__main__":
    sys.exit(main())
