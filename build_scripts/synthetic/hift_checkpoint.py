"""Synthetic `hift.pt` (HiFT vocoder) and the matching `hift` section of cosyvoice.yaml.

`hift_yaml_section(preset)` is the section as the yaml reader returns it (tagged classes as
`__class__`); "full" has CosyVoice2's / EditX's values (≈ 21 M parameters), "tiny" the same
structure with narrow channels (the rates and kernel sizes stay: they fix 480 samples per
frame). `write_hift` saves a state dict under the release's key names (weight-normed convs as
`…parametrizations.weight.original0/1`), values seeded per tensor.

The F0 classifier is scaled and shifted so that the predicted pitch lies in a voice's range
(about 3-300 Hz on speech, mostly above the 10 Hz voiced threshold): with plain random values
it predicts about 1 Hz, every frame is unvoiced and HiFT's sine source never runs.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from python_backends.decoder.cosyvoice_yaml import CLASS_KEY
from python_backends.decoder.hift import build_hift
from .files import write_bytes_atomic
from .random_init import init_parameter, normal

FILE_NAME = "hift.pt"
HIFT_CLASS_PATH = "stepvocoder.cosyvoice2.hifigan.generator.HiFTGenerator"
F0_CLASS_PATH = "stepvocoder.cosyvoice2.hifigan.f0_predictor.ConvRNNF0Predictor"
CHANNELS = {"tiny": (32, 32), "full": (512, 512)}  # base_channels, f0 cond_channels
POST_SCALE = 0.1  # conv_post weights: keeps exp(log-magnitude) in a speech-like range
F0_SCALE, F0_CENTRE_HZ = 200.0, 150.0  # f0 = |F0_SCALE·(w·h + b) + F0_CENTRE_HZ|


def hift_yaml_section(preset: str) -> dict:
    if preset not in CHANNELS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(CHANNELS)}")
    base, cond = CHANNELS[preset]
    return {
        CLASS_KEY: HIFT_CLASS_PATH,
        "in_channels": 80,
        "base_channels": base,
        "nb_harmonics": 8,
        "sampling_rate": 24000,
        "nsf_alpha": 0.1,
        "nsf_sigma": 0.003,
        "nsf_voiced_threshold": 10,
        "upsample_rates": [8, 5, 3],
        "upsample_kernel_sizes": [16, 11, 7],
        "istft_params": {"n_fft": 16, "hop_len": 4},
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "source_resblock_kernel_sizes": [7, 7, 11],
        "source_resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "lrelu_slope": 0.1,
        "audio_limit": 0.99,
        "f0_predictor": {CLASS_KEY: F0_CLASS_PATH, "num_class": 1, "in_channels": 80,
                         "cond_channels": cond},
    }


def random_state_dict(preset: str, seed: int) -> dict[str, torch.Tensor]:
    """Seeded values for every hift.pt tensor: v ~ N(0, 1/fan_in) with g = |v| per output (so
    the folded weight is v), Snake α ~ N(1, 0.1), biases small."""
    state = build_hift(hift_yaml_section(preset)).state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        key = f"hift/{name}"
        if name.endswith("original0"):
            continue
        if name.endswith("alpha"):
            out[name] = normal(seed, key, tensor.shape, 0.1, 1.0).abs()
        elif name.endswith("original1"):
            v = init_parameter(seed, key, tensor.shape, is_norm=False)
            if name.startswith("conv_post."):
                v = v * POST_SCALE
            out[name] = v
            g_name = name[:-len("original1")] + "original0"
            out[g_name] = v.flatten(1).norm(dim=1).reshape(state[g_name].shape)
        else:
            out[name] = init_parameter(seed, key, tensor.shape, is_norm=False)
    out["f0_predictor.classifier.weight"] = out["f0_predictor.classifier.weight"] * F0_SCALE
    out["f0_predictor.classifier.bias"] = out["f0_predictor.classifier.bias"] * F0_SCALE + F0_CENTRE_HZ
    return {name: out[name] for name in state}


def parameter_count(preset: str) -> int:
    return sum(t.numel() for t in random_state_dict(preset, 0).values())


def write_hift(out_dir: Path, preset: str, seed: int) -> list[Path]:
    """Write `out_dir/hift.pt` (atomically) and return [its path]."""
    path = Path(out_dir) / FILE_NAME
    buffer = io.BytesIO()
    torch.save(random_state_dict(preset, seed), buffer)
    write_bytes_atomic(path, buffer.getvalue())
    return [path]
