"""Reads a FunASR Paraformer-streaming model directory (config.yaml, model.pt, am.mvn).

Only what the vq02 encoder path needs is read; funasr itself is not imported, so the
serving process starts fast.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import yaml


@dataclasses.dataclass(frozen=True)
class ParaformerWeights:
    encoder_conf: dict
    frontend_conf: dict
    encoder_state: dict  # encoder.* tensors with the "encoder." prefix removed
    cmvn_shift: np.ndarray  # float32 [560], added first
    cmvn_scale: np.ndarray  # float32 [560], multiplied second

    @property
    def dither(self) -> float:
        # WavFrontendOnline's default when the config does not set it
        return float(self.frontend_conf.get("dither", 1.0))


def read_am_mvn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Kaldi nnet1 text CMVN as FunASR writes it: <AddShift> then <Rescale> value rows."""
    rows: dict[str, np.ndarray] = {}
    pending = None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] in ("<AddShift>", "<Rescale>"):
            pending = parts[0]
        elif parts[0] == "<LearnRateCoef>" and pending:
            rows[pending] = np.asarray(parts[3:-1], dtype=np.float32)
            pending = None
    missing = {"<AddShift>", "<Rescale>"} - rows.keys()
    if missing:
        raise ValueError(f"{path}: missing {sorted(missing)} rows")
    return rows["<AddShift>"], rows["<Rescale>"]


def load_paraformer(model_dir: str | Path) -> ParaformerWeights:
    model_dir = Path(model_dir)
    for name in ("config.yaml", "model.pt", "am.mvn"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"Paraformer model directory {model_dir} lacks {name}")
    conf = yaml.safe_load((model_dir / "config.yaml").read_text(encoding="utf-8"))
    state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    encoder_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if not encoder_state:
        raise ValueError(f"{model_dir / 'model.pt'} holds no encoder.* tensors")
    shift, scale = read_am_mvn(model_dir / "am.mvn")
    return ParaformerWeights(conf["encoder_conf"], conf["frontend_conf"], encoder_state, shift, scale)
