"""Synthetic CosyVoice flow: `flow.pt` with the release's tensor names and `flow_noise.npy`.

`flow_yaml_section(preset)` is the `flow:` object of cosyvoice.yaml (HyperPyYAML `!new:` form
as dicts, see python_backends.decoder.cosyvoice_yaml); `base_yaml_sections()` holds the
top-level keys around it. "full" has the release's sizes (≈154 M parameters), "tiny" keeps the
interfaces (vocab 5121, 80 mel bins, 192-d speaker) with small hidden sizes for tests.
"""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from python_backends.decoder.cosyvoice_yaml import APPLY_KEY, CLASS_KEY, Ref
from python_backends.decoder.flow import (FLOW_FILE, FLOW_NOISE_FILE, CausalMaskedDiffWithXvec,
                                          flow_config_from_yaml)
from python_backends.settings import DECODER

from .files import atomic_open, write_bytes_atomic
from .random_init import init_parameter, normal

PACKAGE = "stepvocoder.cosyvoice2"  # the EditX code's module paths


@dataclasses.dataclass(frozen=True)
class FlowPreset:
    hidden: int  # embedding output = encoder width
    attention_heads: int
    linear_units: int
    num_blocks: int
    num_up_blocks: int
    dit_hidden: int
    dit_depth: int
    dit_heads: int
    dit_head_dim: int


FLOW_PRESETS = {
    "tiny": FlowPreset(hidden=64, attention_heads=2, linear_units=128, num_blocks=2,
                       num_up_blocks=1, dit_hidden=64, dit_depth=2, dit_heads=2, dit_head_dim=32),
    "full": FlowPreset(hidden=512, attention_heads=8, linear_units=2048, num_blocks=6,
                       num_up_blocks=4, dit_hidden=512, dit_depth=16, dit_heads=8, dit_head_dim=64),
}


def _preset(name: str) -> FlowPreset:
    try:
        return FLOW_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(FLOW_PRESETS)}") from None


def base_yaml_sections() -> dict:
    """Top-level keys of cosyvoice.yaml besides `flow` and `hift` (CosyVoice's seed lines are
    kept as inert `!apply` nodes; mel_conf as the EditX frontend reads it)."""
    return {
        "__set_seed1": {APPLY_KEY: "random.seed", "args": [1986]},
        "__set_seed2": {APPLY_KEY: "numpy.random.seed", "args": [1986]},
        "__set_seed3": {APPLY_KEY: "torch.manual_seed", "args": [1986]},
        "sample_rate": DECODER.output_sample_rate,
        "mel_conf": {
            "num_mels": DECODER.mel_bins, "n_fft": DECODER.mel_n_fft, "hop_size": DECODER.mel_hop,
            "win_size": DECODER.mel_n_fft, "sampling_rate": Ref("<sample_rate>"),
            "fmin": 0, "fmax": int(DECODER.mel_fmax),
        },
    }


def flow_yaml_section(preset: str) -> dict:
    p = _preset(preset)
    mel, spk = DECODER.mel_bins, DECODER.speaker_dim
    vocab = 5121  # 1024 vq02 + 4096 vq06 + 1 vq02 pad
    return {
        CLASS_KEY: f"{PACKAGE}.flow.flow.CausalMaskedDiffWithXvec",
        "input_size": p.hidden, "output_size": mel, "spk_embed_dim": spk,
        "output_type": "mel", "vocab_size": vocab,
        "input_embedding": {CLASS_KEY: f"{PACKAGE}.embedding.dual_codebook.DualCodebookEmbedding",
                            "vocab_size": vocab, "input_size": p.hidden},
        "encoder": {
            CLASS_KEY: f"{PACKAGE}.transformer.upsample_encoder_v2.UpsampleConformerEncoderV2",
            "input_size": p.hidden, "output_size": p.hidden, "input_layer": "linear",
            "pre_lookahead_len": 3, "num_blocks": p.num_blocks, "num_up_blocks": p.num_up_blocks,
            "up_stride": 2, "up_scale_factor": 2, "attention_heads": p.attention_heads,
            "pos_enc_layer_type": "rel_pos_espnet", "selfattention_layer_type": "rel_selfattn",
            "key_bias": True, "linear_units": p.linear_units, "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.1,
            "normalize_before": True,
        },
        "decoder": {
            CLASS_KEY: f"{PACKAGE}.flow.flow_matching.CausalConditionalCFM",
            "inference_cfg_rate": DECODER.cfg_rate,
            "estimator": {CLASS_KEY: f"{PACKAGE}.flow.decoder_dit.DiT",
                          "in_channels": 4 * mel, "out_channels": mel, "mlp_ratio": 4.0,
                          "depth": p.dit_depth, "num_heads": p.dit_heads,
                          "head_dim": p.dit_head_dim, "hidden_size": p.dit_hidden},
        },
    }


def flow_state_dict(preset: str, seed: int) -> dict[str, torch.Tensor]:
    """Seeded values for every tensor of the flow, named as in the release's flow.pt."""
    cfg = flow_config_from_yaml({"flow": flow_yaml_section(preset)})
    with torch.device("meta"):
        model = CausalMaskedDiffWithXvec(cfg)
    norms = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, nn.LayerNorm)
             for p, _ in mod.named_parameters(recurse=False)}
    return {name: init_parameter(seed, f"flow/{name}", t.shape, name in norms)
            for name, t in model.state_dict().items()}


def write_flow(out_dir: Path, preset: str, seed: int) -> list[Path]:
    """Write flow.pt and flow_noise.npy into `out_dir` (cosyvoice.yaml is written by the caller
    from `flow_yaml_section`)."""
    out_dir = Path(out_dir)
    flow_path, noise_path = out_dir / FLOW_FILE, out_dir / FLOW_NOISE_FILE
    with atomic_open(flow_path) as f:
        torch.save(flow_state_dict(preset, seed), f)
    noise = normal(seed, "flow/rand_noise", (1, DECODER.mel_bins, DECODER.noise_frames), 1.0)
    buf = io.BytesIO()
    np.save(buf, noise.numpy().astype(np.float32))
    write_bytes_atomic(noise_path, buf.getvalue())
    return [flow_path, noise_path]
