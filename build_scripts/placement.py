"""Which GPU each model's instances run on: `--placement vq02=0,vq06=1,llm=0,decoder=1` or `auto`.

A placement names groups of models, so a user thinks in pipeline stages rather than in Triton
model names. A group without an entry runs on `--gpus` (all listed GPUs). `auto` counts the
GPUs visible here: one GPU takes everything; with two or more, the two tokenizer branches go
to different GPUs (the user's plan) and the LLM, the heaviest stage, gets GPU 0 to itself as
far as the count allows (decoder and prompt features share the other).
"""
from __future__ import annotations

import shutil
import subprocess

GROUPS: dict[str, tuple[str, ...]] = {
    "vq02": ("vq02", "vq02_encoder"),
    "vq06": ("vq06", "vq06_encoder"),
    "llm": ("llm_stream",),
    "decoder": ("token2wav", "clone_stream"),  # clone_stream holds the streaming decoder
    "prompt": ("speaker_embedding", "prompt_features"),
}
GPU_MODELS = tuple(m for models in GROUPS.values() for m in models)


class PlacementError(ValueError):
    """A placement string that names an unknown group or a GPU that is not offered."""


def visible_gpu_count() -> int:
    """GPUs nvidia-smi lists here (0 without a driver)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    listing = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def auto_placement(gpu_count: int) -> dict[str, int]:
    if gpu_count < 1:
        raise PlacementError("--placement auto found no GPU here (nvidia-smi -L lists none); "
                             "name the GPUs, e.g. --placement vq02=0,vq06=1,llm=0,decoder=1")
    if gpu_count == 1:
        return {group: 0 for group in GROUPS}
    second = 1
    third = 2 if gpu_count > 2 else 1
    return {"llm": 0, "vq02": 0, "vq06": second, "decoder": third, "prompt": third}


def parse_placement(text: str | None, gpu_count: int | None = None) -> dict[str, int]:
    """"vq02=0,llm=1" → {"vq02": 0, "llm": 1}; "auto" → auto_placement(visible GPUs)."""
    if not text:
        return {}
    if text.strip() == "auto":
        return auto_placement(visible_gpu_count() if gpu_count is None else gpu_count)
    placement: dict[str, int] = {}
    for item in text.split(","):
        group, sep, gpu = item.strip().partition("=")
        if not sep or group not in GROUPS or not gpu.strip().isdigit():
            raise PlacementError(f"--placement entry '{item.strip()}' is not GROUP=GPU with GROUP one "
                                 f"of {', '.join(GROUPS)} and GPU a device index (or use 'auto')")
        if group in placement:
            raise PlacementError(f"--placement names '{group}' twice")
        placement[group] = int(gpu)
    return placement


def model_gpus(placement: dict[str, int], default: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Every GPU-capable model → the GPUs its instance group lists."""
    out = {}
    for group, models in GROUPS.items():
        gpus = (placement[group],) if group in placement else tuple(default)
        for model in models:
            out[model] = gpus
    return out
