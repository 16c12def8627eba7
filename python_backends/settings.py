"""All tunables of the tokenizer in one typed place.

Algorithm constants (what Step-Audio fixes) live in `Algorithm`; what an operator may
change per deployment (paths, limits, threads, device) lives in `TokenizerSettings`, which
`build_scripts/build_repository.py` serialises into each model's config parameters.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """Constants of the original Step-Audio tokenizer (see step_audio_internals.md §1)."""

    sample_rate: int = 16000
    # preprocess
    peak_floor: float = 0.01
    peak_target: float = 0.999
    trim_top_db: float = 20.0
    trim_frame_length: int = 512
    trim_hop_length: int = 128
    trim_unit: int = 240
    trim_left_context: int = 800
    trim_right_extra: int = 4320
    # vq02 streaming encoder: chunk_size=[0, 4, 5], encoder look-back 4
    chunk_new_frames: int = 4
    chunk_lookahead: int = 5
    encoder_look_back: int = 4
    chunk_samples: int = 3840
    # fbank / LFR
    n_mels: int = 80
    frame_length_samples: int = 400
    frame_shift_samples: int = 160
    lfr_m: int = 7
    lfr_n: int = 6
    # vq06
    vq06_piece_samples: int = 480000
    vq06_min_piece_samples: int = 480
    vq06_n_mels: int = 128
    # merge
    vq02_codes: int = 1024
    audio_token_offset: int = 65536
    group_vq02: int = 2
    group_vq06: int = 3


ALGORITHM = Algorithm()

PARAFORMER_DIR = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
CENTROIDS_FILE = "linguistic_tokenizer.npy"
SPEECH_TOKENIZER_FILE = "speech_tokenizer_v1.onnx"


@dataclasses.dataclass(frozen=True)
class TokenizerSettings:
    """Deployment settings shared by the tokenizer models, the reference and the benchmarks."""

    weights_dir: str
    device: str = "cpu"
    max_audio_seconds: float = 120.0
    min_sample_rate: int = 8000
    max_sample_rate: int = 192000
    num_threads: int = 0  # 0: leave torch / onnxruntime defaults
    dither: float | None = None  # None: take frontend_conf.dither from the Paraformer config
    # vq02 encoder engine: "torch" (ChunkedEncoderQuantizer) or "onnx" (onnxruntime over the file
    # build_scripts/export_vq02_onnx.py writes; CUDA provider when device is cuda:N)
    vq02_engine: str = "torch"
    # that file; None: the export's default path for these weights
    # (build/engines/vq02_encoder.<weights hash>.onnx); a relative path is taken from the project root
    vq02_onnx: str | None = None
    # "fp32" (tokens identical to the original) or "bf16": the torch engine under bf16 autocast
    # (AMX/AVX512-BF16 CPUs, GPUs); faster, tokens agree only mostly (perf/RESULTS.md)
    vq02_precision: str = "fp32"

    @property
    def paraformer_dir(self) -> Path:
        return Path(self.weights_dir) / PARAFORMER_DIR

    @property
    def centroids_path(self) -> Path:
        return Path(self.weights_dir) / CENTROIDS_FILE

    @property
    def speech_tokenizer_path(self) -> Path:
        return Path(self.weights_dir) / SPEECH_TOKENIZER_FILE

    def apply_threads(self) -> None:
        """torch's intra-op threads for this process (onnxruntime sessions take num_threads)."""
        if self.num_threads:
            import torch

            torch.set_num_threads(self.num_threads)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TokenizerSettings":
        return cls(**json.loads(text))
