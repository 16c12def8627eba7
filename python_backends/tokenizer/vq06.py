"""Fast vq06: 30 s pieces → Whisper log-mel → speech_tokenizer_v1.onnx, all pieces of all
requests in one padded onnxruntime run (the model masks padding by `feats_length`).

`padded_batching=False` batches only pieces of identical length, which is exact for any
model file, including one that would not mask padding. With an `engine_client`
(python_backends.serving.engine_client) the network runs in a Triton engine model instead (GPU
repositories): the log-mel batch is built on the instance's device and sent by BLS.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..onnx_runtime import onnx_session
from ..settings import ALGORITHM as A
from .whisper_mel import log_mel


def split_pieces(audio: np.ndarray) -> list[np.ndarray]:
    """Original rule: 30 s pieces; a piece shorter than 480 samples (only the last) is dropped."""
    step = A.vq06_piece_samples
    pieces = [audio[i:i + step] for i in range(0, len(audio), step)]
    return [p for p in pieces if len(p) >= A.vq06_min_piece_samples]


def tokens_for_frames(frames: int) -> int:
    """Output length of the two stride-2, kernel-3, pad-1 convolutions."""
    for _ in range(2):
        frames = (frames - 1) // 2 + 1
    return frames


class Vq06Tokenizer:
    def __init__(self, onnx_path: str, device: str = "cpu", num_threads: int = 0,
                 padded_batching: bool = True, engine_client=None):
        self.device = device
        self.padded_batching = padded_batching
        if engine_client is None:
            session = onnx_session(onnx_path, device, num_threads)
            names = [i.name for i in session.get_inputs()]
            self._run_graph = lambda feats, lengths: session.run(
                None, {names[0]: feats.cpu().numpy(), names[1]: lengths.cpu().numpy()})[0]
        else:
            self._run_graph = lambda feats, lengths: engine_client.infer(
                {"feats": feats, "feats_length": lengths}, ["indices"])["indices"]

    @classmethod
    def from_settings(cls, settings, engine_client=None) -> "Vq06Tokenizer":
        return cls(str(settings.speech_tokenizer_path), settings.device, settings.num_threads,
                   engine_client=engine_client)

    def _run(self, mels: list) -> list[np.ndarray]:
        frames = [m.shape[1] for m in mels]
        batch = torch.zeros((len(mels), A.vq06_n_mels, max(frames)), device=self.device)
        for i, m in enumerate(mels):
            batch[i, :, :m.shape[1]] = m
        out = self._run_graph(batch, torch.tensor(frames, dtype=torch.int32, device=self.device))
        out = np.asarray(out if isinstance(out, np.ndarray) else out.cpu()).reshape(len(mels), -1)
        return [out[i, :tokens_for_frames(f)].astype(np.int32) for i, f in enumerate(frames)]

    def __call__(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """16 kHz float32 utterances → vq06 codes int32 (25 Hz), one array per utterance."""
        pieces = [(u, log_mel(p, A.vq06_n_mels, self.device)) for u, a in enumerate(audios)
                  for p in split_pieces(a)]
        groups: dict[int, list[int]] = defaultdict(list)
        for k, (_, mel) in enumerate(pieces):
            groups[0 if self.padded_batching else mel.shape[1]].append(k)
        codes: list = [None] * len(pieces)
        for members in groups.values():
            for k, c in zip(members, self._run([pieces[k][1] for k in members])):
                codes[k] = c
        per_utt: list[list[np.ndarray]] = [[] for _ in audios]
        for (u, _), c in zip(pieces, codes):
            per_utt[u].append(c)
        return [np.concatenate(c) if c else np.zeros(0, np.int32) for c in per_utt]
