"""A synthetic `campplus.onnx` with the real file's interface.

The release's CAM++ speaker model (3D-Speaker, as CosyVoice ships it) is used only through its
interface: input `input` float32 [B, T, 80] (mean-removed kaldi fbank), first output float32
[B, 192]. The real network is a D-TDNN with a 2-D conv head (~7 M parameters); our code never
looks inside it, so the synthetic file holds a stand-in of about the same size: an x-vector
TDNN (dilated Conv1d + ReLU), mean/std pooling over time, two linear layers. The output name
`output` is ours (the real one is not read by anything: callers take the first output).
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .files import temp_path_for
from .random_init import init_parameter

FILE_NAME = "campplus.onnx"
INPUT_NAME = "input"
OUTPUT_NAME = "output"
FEATURE_BINS = 80
EMBEDDING_DIM = 192
OPSET = 17
STD_FLOOR = 1e-5


@dataclasses.dataclass(frozen=True)
class CampplusPreset:
    channels: int  # TDNN width
    pool_channels: int  # channels entering mean/std pooling
    hidden: int  # the first linear layer after pooling


PRESETS = {
    "tiny": CampplusPreset(channels=32, pool_channels=64, hidden=64),
    "full": CampplusPreset(channels=640, pool_channels=1536, hidden=512),  # ≈ 7 M parameters
}
# (kernel, dilation) of the TDNN layers after the first (kernel 5) one
TDNN_LAYERS = ((3, 2), (3, 3), (3, 4), (1, 1))


class StandInSpeakerNet(nn.Module):
    """fbank [B, T, 80] → embedding [B, 192]; every frame counts (no padding mask, like CAM++)."""

    def __init__(self, p: CampplusPreset):
        super().__init__()
        layers = [nn.Conv1d(FEATURE_BINS, p.channels, 5, padding=2)]
        for kernel, dilation in TDNN_LAYERS:
            layers.append(nn.Conv1d(p.channels, p.channels, kernel, dilation=dilation,
                                    padding=dilation * (kernel - 1) // 2))
        self.tdnn = nn.ModuleList(layers)
        self.expand = nn.Conv1d(p.channels, p.pool_channels, 1)
        self.dense = nn.Linear(2 * p.pool_channels, p.hidden)
        self.embedding = nn.Linear(p.hidden, EMBEDDING_DIM)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = feats.transpose(1, 2)
        for conv in self.tdnn:
            x = torch.relu(conv(x))
        x = torch.relu(self.expand(x))
        mean = x.mean(dim=2)
        std = torch.sqrt(((x - mean[:, :, None]) ** 2).mean(dim=2) + STD_FLOOR)
        return self.embedding(torch.relu(self.dense(torch.cat([mean, std], dim=1))))


def random_model(preset: str, seed: int) -> StandInSpeakerNet:
    model = StandInSpeakerNet(PRESETS[preset]).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(init_parameter(seed, f"campplus/{name}", param.shape, is_norm=False))
    return model


def parameter_count(preset: str) -> int:
    return sum(p.numel() for p in StandInSpeakerNet(PRESETS[preset]).parameters())


def write_campplus(out_dir: Path, preset: str, seed: int) -> Path:
    """Write `out_dir/campplus.onnx` (atomically) and return its path."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    path = Path(out_dir) / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    model = random_model(preset, seed)
    example = torch.randn(2, 57, FEATURE_BINS, generator=torch.Generator().manual_seed(0))
    tmp = temp_path_for(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch", 1: "frames"},
                                            OUTPUT_NAME: {0: "batch"}},
                              opset_version=OPSET, do_constant_folding=True, dynamo=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
