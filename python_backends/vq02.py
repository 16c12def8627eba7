"""Fast vq02: features per utterance, then one batched encoder + k-means pass for all of them."""
from __future__ import annotations

import numpy as np
import torch

from .chunk_encoder import ChunkedEncoderQuantizer
from .fbank_frontend import ParaformerFrontend
from .paraformer_weights import load_paraformer
from .settings import ALGORITHM as A


class Vq02Tokenizer:
    def __init__(self, paraformer_dir: str, centroids_path: str, device: str = "cpu",
                 dither: float | None = None):
        weights = load_paraformer(paraformer_dir)
        self.frontend = ParaformerFrontend(weights.cmvn_shift, weights.cmvn_scale,
                                           weights.dither if dither is None else dither,
                                           weights.frontend_conf.get("window", "hamming"))
        self.device = torch.device(device)
        model = ChunkedEncoderQuantizer(weights.encoder_conf, A.n_mels * A.lfr_m, np.load(centroids_path))
        model.load_encoder_state(weights.encoder_state)
        self.model = model.eval().to(self.device)

    def __call__(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """16 kHz float32 utterances → vq02 codes int32 (16.7 Hz), one array per utterance."""
        feats = [self.frontend(a) for a in audios]
        lengths = [len(f) for f in feats]
        packed = torch.from_numpy(np.concatenate(feats)).to(self.device)
        codes, _ = self.model(packed, lengths)
        codes = codes.to(torch.int32).cpu().numpy()
        return np.split(codes, np.cumsum(lengths)[:-1])
