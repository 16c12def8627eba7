"""Synthetic Step1 (Step-Audio-EditX LLM) checkpoints in the release's layout.

    python -m build_scripts.synthetic.step1_checkpoint --preset tiny|full --out DIR [--seed N]

writes DIR/config.json (the release's field names, untied embeddings), DIR/model-00001.safetensors
(bf16, the release's tensor names) and DIR/model.safetensors.index.json. Tensors are streamed
to the file one at a time (the full preset is 3.5 B parameters, 7 GB), each drawn from its own
seeded generator. Scales keep activations sane through the layers and give logits a spread
(std ~2.5), so sampling and greedy decoding are not degenerate.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import struct
import time
from pathlib import Path
from typing import Callable

import torch

from build_scripts.synthetic.files import atomic_open, write_bytes_atomic
from build_scripts.synthetic.random_init import normal
from python_backends.llm.step1_config import Step1Config
from python_backends.llm.step1_model import INDEX_FILE, expected_tensors
from python_backends.settings import LLM, LLM_CONFIG_FILE

LOG = logging.getLogger("step1_checkpoint")
WEIGHTS_FILE = "model-00001.safetensors"
VOCAB_SIZE = 74752  # audio ids reach 65536 + 5119; the release's vocabulary
LOGIT_STD = 2.5
NON_AUDIO_ROW_SCALE = 0.05

PRESETS: dict[str, Step1Config] = {
    # 12 heads / 4 groups: head_dim 8, and the slope formula's "extra heads" branch (12 = 8 + 4)
    "tiny": Step1Config(hidden_size=96, num_hidden_layers=2, num_attention_heads=12,
                        num_attention_groups=4, intermediate_size=256, vocab_size=VOCAB_SIZE),
    "full": Step1Config(hidden_size=3072, num_hidden_layers=32, num_attention_heads=48,
                        num_attention_groups=4, intermediate_size=8192, vocab_size=VOCAB_SIZE),
}


def config_json(config: Step1Config) -> dict:
    """config.json as the release spells it (remote-code `step1` model, bf16, untied)."""
    return {
        "architectures": ["Step1ForCausalLM"],
        "model_type": "step1",
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_attention_heads,
        "num_attention_groups": config.num_attention_groups,
        "num_hidden_layers": config.num_hidden_layers,
        "max_seq_len": config.max_seq_len,
        "vocab_size": config.vocab_size,
        "rms_norm_eps": config.rms_norm_eps,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }


def init_std(name: str, shape: tuple, config: Step1Config) -> tuple[float, float]:
    """(mean, std) of a tensor by its role."""
    if name.endswith("norm.weight"):
        return 1.0, 0.05
    if name == "model.embed_tokens.weight":
        return 0.0, 1.0
    if name == "lm_head.weight":
        return 0.0, LOGIT_STD / math.sqrt(config.hidden_size)
    std = 1.0 / math.sqrt(shape[1])
    if name.endswith(("o_proj.weight", "down_proj.weight")):  # residual branches
        std /= math.sqrt(2 * config.num_hidden_layers)
    return 0.0, std


def speech_like_head(lm_head: torch.Tensor) -> torch.Tensor:
    """Shrink the rows of non-audio ids so a random model speaks: their logits stay near 0
    while audio ids' spread ~LOGIT_STD, so top-k 50 and greedy pick <audio_N> ids, as the real
    model does after a clone prompt (ids past the audio range would not decode). <|EOT|> is
    shrunk too: synthetic generation ends at max_length / max_new_tokens."""
    audio = slice(LLM.audio_token_offset, LLM.audio_token_offset + LLM.audio_tokens)
    out = lm_head * NON_AUDIO_ROW_SCALE
    out[audio] = lm_head[audio]
    return out


def write_safetensors_streaming(path: Path, shapes: dict[str, tuple],
                                make: Callable[[str], torch.Tensor]) -> None:
    """A bf16 safetensors file written tensor by tensor: the header (offsets from the shapes)
    first, then each tensor's bytes as `make(name)` produces it."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    started = time.monotonic()
    with atomic_open(path) as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for n, (name, shape) in enumerate(shapes.items(), 1):
            tensor = make(name).to(torch.bfloat16).contiguous()
            if tuple(tensor.shape) != tuple(shape):
                raise AssertionError(f"{name}: made {list(tensor.shape)}, "
                                     f"header says {list(shape)}")
            f.write(tensor.view(torch.int16).numpy())
            if n % 10 == 0 or n == len(shapes):
                LOG.info("%s: %d/%d tensors (%.0f s)", path.name, n, len(shapes),
                         time.monotonic() - started)


def write_step1_checkpoint(out_dir: Path, preset: str, seed: int) -> list[Path]:
    """Write config.json, model-00001.safetensors and its index into `out_dir`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown Step1 preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[preset]
    out_dir = Path(out_dir)
    shapes = expected_tensors(config)

    def make(name: str) -> torch.Tensor:
        mean, std = init_std(name, shapes[name], config)
        tensor = normal(seed, name, shapes[name], std, mean)
        if name == "lm_head.weight":
            tensor = speech_like_head(tensor)
        return tensor

    weights = out_dir / WEIGHTS_FILE
    write_safetensors_streaming(weights, shapes, make)
    index = out_dir / INDEX_FILE
    total = sum(math.prod(s) * 2 for s in shapes.values())
    write_bytes_atomic(index, json.dumps({"metadata": {"total_size": total},
                                          "weight_map": {n: WEIGHTS_FILE for n in shapes}},
                                         indent=2).encode())
    config_path = out_dir / LLM_CONFIG_FILE
    write_bytes_atomic(config_path, json.dumps(config_json(config), indent=2).encode())
    return [config_path, weights, index]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for path in write_step1_checkpoint(args.out, args.preset, args.seed):
        print(path)


if __name__ == "__main__":
    main()
