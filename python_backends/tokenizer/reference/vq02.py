"""Original vq02: FunASR's own streaming loop (chunk_size=[0,4,5], look-back 4) + cdist/argmin.

pip funasr has no `infer_encoder` (Step-Audio used a patched copy), so the loop is written
over the public `extract_fbank` / `encode_chunk` API exactly as the patched copy drives it.
pip funasr's frontend emits 1–5 spurious frames in a separate final step for some lengths;
the original drops them, so the output is cut to the original's frame count. Its fbank is
torchaudio's (`kaldi_fbank`), as in the original, not pip funasr's kaldi-native-fbank fallback.
"""
from __future__ import annotations

import numpy as np
import torch

from ..fbank_frontend import stream_frame_count
from .kaldi_fbank import funasr_uses_torchaudio_fbank
from ...settings import ALGORITHM as A


class ReferenceVq02:
    def __init__(self, paraformer_dir: str, centroids_path: str, dither: float | None = None):
        from funasr import AutoModel

        # AutoModel calls torch.set_num_threads(ncpu) (default 4) for the whole process; keep
        # the current count so the reference and the fast path run on the same threads
        self.auto = AutoModel(model=str(paraformer_dir), device="cpu", disable_update=True,
                              disable_pbar=True, log_level="ERROR", ncpu=torch.get_num_threads())
        self.model = self.auto.model.eval()
        self.frontend = self.auto.kwargs["frontend"]
        if dither is not None:
            self.frontend.dither = float(dither)
        self.centroids = torch.tensor(np.load(centroids_path))

    def _chunks(self, audio: np.ndarray, cache: dict):
        """The original's loop: (frontend output [1, n, 560], lengths, is_final) per chunk."""
        from funasr.utils.load_utils import extract_fbank

        kwargs = dict(self.auto.kwargs, chunk_size=[0, A.chunk_new_frames, A.chunk_lookahead],
                      encoder_chunk_look_back=A.encoder_look_back, decoder_chunk_look_back=1)
        self.model.init_cache(cache, **kwargs)
        samples = torch.as_tensor(audio)
        steps = len(samples) // A.chunk_samples + 1
        with funasr_uses_torchaudio_fbank():
            for i in range(steps):
                final = i == steps - 1
                seg = samples[i * A.chunk_samples:(i + 1) * A.chunk_samples]
                if final and len(seg) == 0:
                    break
                try:
                    speech, lengths = extract_fbank([seg], data_type="sound", frontend=self.frontend,
                                                    cache=cache["frontend"], is_final=final)
                except Exception:
                    if final and len(seg) < 480:
                        break
                    raise
                if len(speech) == 0 and final:
                    break
                yield speech, lengths, final

    @torch.inference_mode()
    def features(self, audio: np.ndarray) -> torch.Tensor:
        """16 kHz float32 samples → the streaming frontend's LFR/CMVN features [T, 560]."""
        outs = [speech[0, :int(lengths[0])] for speech, lengths, _ in self._chunks(audio, {})]
        feats = torch.cat(outs) if outs else torch.zeros(0, A.n_mels * A.lfr_m)
        return feats[:stream_frame_count(len(audio))]

    @torch.inference_mode()
    def encode(self, audio: np.ndarray) -> torch.Tensor:
        """16 kHz float32 samples → encoder output [T, D], one 3840-sample chunk at a time."""
        cache: dict = {}
        outs = []
        for speech, lengths, final in self._chunks(audio, cache):
            enc, _ = self.model.encode_chunk(speech, lengths, cache=cache, is_final=final)
            outs.append(enc[0, -int(lengths[0]):])
        enc = torch.cat(outs) if outs else torch.zeros(0, self.centroids.shape[1])
        return enc[:stream_frame_count(len(audio))]

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        enc = self.encode(audio).float()
        return torch.cdist(enc, self.centroids).argmin(dim=1).numpy().astype(np.int32)
