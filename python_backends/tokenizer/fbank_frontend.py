"""VQ02 features: kaldi fbank → LFR(7,6) → CMVN over a whole utterance, cut to the stream's length.

Step-Audio runs FunASR's streaming frontend chunk by chunk (3840 samples per step). Every
fbank frame and every LFR frame depends only on its own samples, so one offline pass gives
the same values; only the number of frames differs at the tail, which
`stream_frame_count` reproduces (the original funasr_detach rule, see feasibility.md §2).

Two backends compute the same features: kaldi-native-fbank on the CPU (the default there) and
`fbank_torch` on the model's device (the default on CUDA, so GPU features never make a
GPU→CPU→GPU round trip). `ParaformerFrontend.packed` returns the features of a whole batch
as one tensor on the device, ready for the packed chunk encoder.
"""
from __future__ import annotations

import math
from typing import Sequence

import kaldi_native_fbank as knf
import numpy as np
import torch

from . import fbank_torch
from ..settings import ALGORITHM as A

BACKENDS = ("knf", "torch")


def stream_frame_count(num_samples: int) -> int:
    """LFR frames the original streaming frontend emits for `num_samples` 16 kHz samples."""
    left = (A.lfr_m - 1) // 2
    full, tail = divmod(num_samples, A.chunk_samples)
    total = full * A.chunk_new_frames
    if tail == 0:
        return total
    carried = (A.frame_length_samples - A.frame_shift_samples) if full > 0 else 0
    available = carried + tail
    if available < A.frame_length_samples:
        return total
    fbank_frames = (available - A.frame_length_samples) // A.frame_shift_samples + 1
    spliced = (1 if full > 0 else left) + fbank_frames
    if spliced < A.lfr_m:
        return total
    return total + math.ceil((spliced - left) / A.lfr_n)


def default_backend(device: str | torch.device) -> str:
    """torch on CUDA (features stay on the GPU), kaldi-native-fbank elsewhere."""
    return "torch" if torch.device(device).type == "cuda" else "knf"


class ParaformerFrontend:
    """Whole-utterance fbank/LFR/CMVN with the streaming tail rule.

    `backend`: "knf" (kaldi-native-fbank, CPU) or "torch" (`fbank_torch`, on `device`); None
    picks torch on CUDA devices and knf otherwise. Both give the same features within float32
    rounding (tests/test_fbank_torch.py).
    """

    def __init__(self, cmvn_shift: np.ndarray, cmvn_scale: np.ndarray, dither: float,
                 window: str = "hamming", device: str | torch.device = "cpu",
                 backend: str | None = None):
        self.shift = cmvn_shift.astype(np.float32)
        self.scale = cmvn_scale.astype(np.float32)
        self.device = torch.device(device)
        self.backend = default_backend(self.device) if backend is None else backend
        if self.backend not in BACKENDS:
            raise ValueError(f"fbank backend must be one of {BACKENDS}, not '{self.backend}'")
        opts = knf.FbankOptions()
        opts.frame_opts.samp_freq = float(A.sample_rate)
        opts.frame_opts.frame_length_ms = 1000.0 * A.frame_length_samples / A.sample_rate
        opts.frame_opts.frame_shift_ms = 1000.0 * A.frame_shift_samples / A.sample_rate
        opts.frame_opts.dither = float(dither)
        opts.frame_opts.window_type = window
        opts.mel_opts.num_bins = A.n_mels
        opts.energy_floor = 0.0
        self._opts = opts
        self._shift_t = torch.from_numpy(self.shift).to(self.device)
        self._scale_t = torch.from_numpy(self.scale).to(self.device)
        self._torch = (fbank_torch.TorchFbank(dither, window, self.device)
                       if self.backend == "torch" else None)

    def fbank(self, audio: np.ndarray) -> np.ndarray:
        """kaldi-native-fbank of one utterance: float32 [F, 80] (always the CPU library)."""
        fb = knf.OnlineFbank(self._opts)
        fb.accept_waveform(float(A.sample_rate), (audio * np.float32(1 << 15)).astype(np.float32))
        fb.input_finished()
        n = fb.num_frames_ready
        if n == 0:
            return np.zeros((0, A.n_mels), np.float32)
        return np.stack([fb.get_frame(i) for i in range(n)]).astype(np.float32)

    @staticmethod
    def lfr(fbank: np.ndarray, num_frames: int) -> np.ndarray:
        """LFR frames 0..num_frames-1: 7 stacked fbank frames every 6, edges padded by repetition."""
        left = (A.lfr_m - 1) // 2
        idx = np.arange(num_frames)[:, None] * A.lfr_n + np.arange(A.lfr_m)[None, :] - left
        idx = np.clip(idx, 0, len(fbank) - 1)
        return fbank[idx].reshape(num_frames, A.lfr_m * A.n_mels)

    def _knf_features(self, audio: np.ndarray) -> np.ndarray:
        num_frames = stream_frame_count(len(audio))
        if num_frames == 0:
            return np.zeros((0, A.lfr_m * A.n_mels), np.float32)
        feats = self.lfr(self.fbank(audio), num_frames)
        feats += self.shift
        feats *= self.scale
        return feats

    def packed(self, audios: Sequence) -> tuple[torch.Tensor, list[int]]:
        """A batch of utterances → float32 [sum T, 560] on this frontend's device (utterances
        one after the other, no padding) and each T = stream_frame_count(len).

        With the torch backend the audio is copied to the device once and nothing comes back;
        with knf the features are computed on the CPU and copied to the device once.
        """
        lengths = [stream_frame_count(len(a)) for a in audios]
        if self._torch is None:
            feats = [self._knf_features(np.asarray(a, np.float32)) for a in audios]
            stacked = np.concatenate(feats) if feats else np.zeros((0, A.lfr_m * A.n_mels), np.float32)
            return torch.from_numpy(stacked).to(self.device), lengths
        fbank, counts = self._torch.packed(audios)
        return fbank_torch.lfr_cmvn(fbank, counts, lengths, self._shift_t, self._scale_t), lengths

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """float32 16 kHz samples in [-1, 1] → float32 [T, 560], T = stream_frame_count(len)."""
        if self._torch is None:
            return self._knf_features(audio)
        return self.packed([audio])[0].cpu().numpy()
