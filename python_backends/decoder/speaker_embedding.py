"""CAM++ speaker embedding of the prompt (EditX `CosyVoiceFrontEnd.extract_spk_embedding`, spec
§3.3 step 2).

Per utterance: resample to 16 kHz (torchaudio's formula), `kaldi.fbank(num_mel_bins=80,
dither=0)` on the [−1, 1] samples (povey window; `fbank_torch`, torchaudio's arithmetic, bit for
bit on the CPU), subtract the mean over time as torch does, run `campplus.onnx` on the CPU
execution provider (as upstream) → float32 [192]. EditX casts the embedding to bf16 before the
flow, so by default it is rounded through bf16 here too.

Batching: CAM++ pools statistics over every input frame and has no padding mask, so padding
would change the embedding; each request runs its own call. Stacking requests of equal length
into one call was measured no faster on the CPU provider (8 × 3 s: 0.20 s stacked vs 0.18 s
one by one, 1 thread, full-size stand-in), so the code stays one call per request.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import InvalidInput
from ..onnx_runtime import onnx_session
from ..tokenizer.fbank_torch import TorchFbank, num_fbank_frames
from ..tokenizer.resample import resample
from ..settings import DECODER

FBANK_BINS = 80
# CosyVoice's call: torchaudio defaults (povey, 25/10 ms, 20 Hz–Nyquist), no ×32768
_FBANK = TorchFbank(0.0, "povey", "cpu", FBANK_BINS, scale=1)


def speaker_features(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 at `sample_rate` → mean-removed fbank float32 [T, 80] (T ≥ 1)."""
    wave = resample(np.asarray(audio, np.float32).reshape(-1), int(sample_rate),
                    DECODER.speaker_sample_rate)
    if num_fbank_frames(len(wave)) == 0:
        raise InvalidInput("waveform", f"has {len(wave)} samples at 16 kHz",
                           "at least 400 (one 25 ms fbank frame)")
    feat = _FBANK(wave)
    return (feat - feat.mean(dim=0, keepdim=True)).numpy()


class SpeakerEmbedder:
    """`campplus.onnx` on onnxruntime's CPU provider; `num_threads` 0 keeps its default."""

    def __init__(self, campplus_onnx_path, num_threads: int = 0, bf16_round: bool = True):
        self.session = onnx_session(str(campplus_onnx_path), "cpu", num_threads)
        self.input_name = self.session.get_inputs()[0].name
        self.bf16_round = bf16_round

    def run_features(self, feats: Sequence[np.ndarray]) -> np.ndarray:
        """Mean-removed fbanks [T_i, 80] → float32 [B, 192], one ONNX call per request."""
        out = np.empty((len(feats), DECODER.speaker_dim), np.float32)
        for i, f in enumerate(feats):
            batch = np.asarray(f, np.float32)[None]
            out[i] = self.session.run(None, {self.input_name: batch})[0].reshape(DECODER.speaker_dim)
        if self.bf16_round:
            out = torch.from_numpy(out).to(torch.bfloat16).to(torch.float32).numpy()
        return out

    def batch(self, audios: Sequence[np.ndarray], sample_rates: Sequence[int]) -> np.ndarray:
        """Utterances (each at its own rate) → float32 [B, 192]."""
        return self.run_features([speaker_features(a, r) for a, r in zip(audios, sample_rates)])

    def __call__(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """One utterance → float32 [192]."""
        return self.batch([audio], [sample_rate])[0]
