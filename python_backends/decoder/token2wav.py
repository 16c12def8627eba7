"""LLM audio tokens → 24 kHz waveform for a batch of requests (EditX `token2wav_nonstream`).

Per request: both id sequences are reshaped into 25 Hz rows (token_reshape), the prompt mel is
nearest-resampled to exactly `up` frames per prompt row (the tokens come from the trimmed
prompt, the mel from the untrimmed one, spec §3.3), then the batch runs the flow (one padded
pass, guidance as a batch of 2 per request) and HiFT (each request's own random source seed).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..settings import EditxSettings
from .cosyvoice_yaml import load_cosyvoice_yaml
from .flow import LoadedFlow, flow_inference, load_flow
from .hift import hift_inference, load_hift
from .token_reshape import reshape_token_ids


def resize_prompt_mel(mel: np.ndarray, frames: int) -> torch.Tensor:
    """[T, 80] → [frames, 80] float32, nearest (F.interpolate): the tokens come from the trimmed
    prompt, the mel from the untrimmed one."""
    x = torch.from_numpy(np.ascontiguousarray(mel, np.float32)).T[None]
    return F.interpolate(x, size=frames, mode="nearest")[0].T


def _pad_rows(rows: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(r) for r in rows])
    out = torch.zeros(len(rows), int(lens.max()), 2, dtype=torch.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.from_numpy(r)
    return out, lens


class Token2Wav:
    def __init__(self, flow: LoadedFlow, hift: torch.nn.Module):
        self.flow = flow
        self.hift = hift
        self.device = flow.noise.device
        self.dtype = flow.noise.dtype

    @classmethod
    def from_settings(cls, settings: EditxSettings, engine_client=None) -> "Token2Wav":
        """`engine_client` (python_backends.serving.engine_client) overrides `flow_engine`: the flow's
        estimator then runs in the engine model it calls."""
        root = settings.cosyvoice_dir
        flow = load_flow(root, settings.device, getattr(torch, settings.flow_dtype))
        if engine_client is not None or settings.flow_engine != "torch":
            from . import estimator_engine  # onnxruntime only where it is asked for

            flow.model.decoder.estimator = (
                estimator_engine.EngineEstimator(engine_client) if engine_client is not None
                else estimator_engine.estimator_from_settings(settings))
        hift_kwargs = load_cosyvoice_yaml(root / "cosyvoice.yaml")["hift"]
        return cls(flow, load_hift(root / "hift.pt", hift_kwargs, settings.device,
                                   getattr(torch, settings.hift_dtype)))

    def prompt_mel_frames(self, mel: np.ndarray, prompt_rows: int) -> torch.Tensor:
        """[T, 80] → [up·prompt_rows, 80], nearest (F.interpolate), in the model dtype."""
        return resize_prompt_mel(mel, self.flow.model.up_rate * prompt_rows)

    @torch.inference_mode()
    def batch(self, items: Sequence[dict]) -> list[np.ndarray]:
        """items: {target_ids, prompt_ids (65536-based), prompt_mel [T, 80],
        speaker_embedding [192], seed} → float32 waveforms, 960 samples per target row."""
        target, target_lens = _pad_rows([reshape_token_ids(i["target_ids"]) for i in items])
        prompt, prompt_lens = _pad_rows([reshape_token_ids(i["prompt_ids"]) for i in items])
        up = self.flow.model.up_rate
        mel = torch.zeros(len(items), up * prompt.shape[1], self.flow.model.cfg.output_size)
        for i, (item, rows) in enumerate(zip(items, prompt_lens.tolist())):
            mel[i, :up * rows] = self.prompt_mel_frames(item["prompt_mel"], rows)
        spk = torch.from_numpy(np.stack([i["speaker_embedding"] for i in items]).astype(np.float32))
        dev = dict(device=self.device)
        out_mel, mel_lens = flow_inference(
            self.flow.model, target.to(**dev), target_lens.to(**dev), prompt.to(**dev),
            prompt_lens.to(**dev), mel.to(**dev, dtype=self.dtype), spk.to(**dev, dtype=self.dtype),
            self.flow.noise)
        waves, lens = hift_inference(self.hift, out_mel, mel_lens, [int(i["seed"]) for i in items])
        waves = waves.float().cpu().numpy()
        return [np.ascontiguousarray(waves[i, :n]) for i, n in enumerate(lens)]
