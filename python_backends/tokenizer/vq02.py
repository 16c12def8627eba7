"""Fast vq02: features per utterance, then one batched encoder + k-means pass for all of them.

Two engines run that pass: "torch" (ChunkedEncoderQuantizer in-process) and "onnx"
(onnxruntime over the graph build_scripts/export_vq02_onnx.py exports from the same module).
Both take the same window plan, built here in numpy, and give the same codes.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from .chunk_encoder import GRAPH_INPUTS, ChunkedEncoderQuantizer, PositionTable, graph_inputs
from .fbank_frontend import ParaformerFrontend
from ..file_io import combined_sha256, onnx_sidecar_path, sha256_file
from .paraformer_weights import load_paraformer
from ..settings import ALGORITHM as A
from ..settings import TokenizerSettings

LOG = logging.getLogger(__name__)
ENGINES = ("torch", "onnx", "triton")  # triton: an engine model reached by BLS
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENGINE_DIR = PROJECT_ROOT / "build" / "engines"
# the files whose bytes determine the exported graph (names as recorded in the metadata)
PARAFORMER_SOURCE_FILES = ("model.pt", "config.yaml", "am.mvn")


def weight_files(paraformer_dir: str | Path, centroids_path: str | Path) -> dict[str, Path]:
    files = {name: Path(paraformer_dir) / name for name in PARAFORMER_SOURCE_FILES}
    files[Path(centroids_path).name] = Path(centroids_path)
    return files




def weights_digest(paraformer_dir: str | Path, centroids_path: str | Path) -> tuple[str, dict[str, str]]:
    """(combined sha256, {file name: sha256}) of the vq02 source weights."""
    per_file = {name: sha256_file(path) for name, path in weight_files(paraformer_dir, centroids_path).items()}
    return combined_sha256(per_file), per_file


def default_onnx_path(digest: str) -> Path:
    """Where the export writes the graph for weights with combined sha256 `digest`."""
    return ENGINE_DIR / f"vq02_encoder.{digest[:12]}.onnx"


def _to_numpy(value) -> np.ndarray:
    """An engine output: numpy already, or a (CUDA) torch tensor."""
    return value if isinstance(value, np.ndarray) else value.cpu().numpy()


def load_centroids(path: str | Path) -> np.ndarray:
    """The k-means codebook [codes, dim]; a damaged file is named in the error."""
    try:
        centroids = np.load(path)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"vq02 centroids {path} are unreadable: {exc}") from exc
    if centroids.ndim != 2:
        raise ValueError(f"vq02 centroids {path} have shape {list(centroids.shape)}, "
                         "expected [codes, encoder dim]")
    return centroids


class Vq02Tokenizer:
    def __init__(self, paraformer_dir: str, centroids_path: str, device: str = "cpu",
                 dither: float | None = None, engine: str = "torch", onnx_path: str | None = None,
                 num_threads: int = 0, engine_client=None, precision: str = "fp32"):
        if engine not in ENGINES:
            raise ValueError(f"vq02 engine must be one of {ENGINES}, got {engine!r}")
        if precision not in PRECISIONS or (precision != "fp32" and engine != "torch"):
            raise ValueError(f"vq02 precision must be one of {tuple(PRECISIONS)} (bf16 with the "
                             f"torch engine only), got {precision!r} with engine {engine!r}")
        self.autocast_dtype = PRECISIONS[precision]
        weights = load_paraformer(paraformer_dir)
        self.frontend = ParaformerFrontend(weights.cmvn_shift, weights.cmvn_scale,
                                           weights.dither if dither is None else dither,
                                           weights.frontend_conf.get("window", "hamming"), device)
        self.device = torch.device(device)
        self.engine = engine
        input_size = A.n_mels * A.lfr_m
        if engine == "torch":
            model = ChunkedEncoderQuantizer(weights.encoder_conf, input_size, load_centroids(centroids_path))
            model.load_encoder_state(weights.encoder_state)
            self.model = model.eval().to(self.device)
        elif engine == "onnx":
            from ..onnx_runtime import onnx_session

            self.model = None
            self.onnx_path = self._checked_onnx_path(paraformer_dir, centroids_path, onnx_path)
            session = onnx_session(str(self.onnx_path), device, num_threads)
            names = tuple(i.name for i in session.get_inputs())
            if sorted(names) != sorted(GRAPH_INPUTS):
                raise ValueError(f"{self.onnx_path}: inputs {names}, expected {GRAPH_INPUTS}")
            self._run_graph = lambda inputs: session.run(["codes"], inputs)[0]
        else:
            if engine_client is None:
                raise ValueError("vq02 engine 'triton' needs the engine model's client")
            self.model = None
            self._run_graph = lambda inputs: _to_numpy(engine_client.infer(inputs, ["codes"])["codes"])
        if self.model is None:
            self.positions = PositionTable(input_size)

    @classmethod
    def from_settings(cls, settings: TokenizerSettings, engine_client=None) -> "Vq02Tokenizer":
        """`engine_client` (python_backends.serving.engine_client) overrides the engine: the graph then
        runs in the engine model it calls."""
        return cls(str(settings.paraformer_dir), str(settings.centroids_path), settings.device,
                   settings.dither, engine="triton" if engine_client else settings.vq02_engine,
                   onnx_path=settings.vq02_onnx, num_threads=settings.num_threads,
                   engine_client=engine_client, precision=settings.vq02_precision)

    @staticmethod
    def _checked_onnx_path(paraformer_dir, centroids_path, onnx_path: str | None) -> Path:
        """The graph to serve; refuses one whose metadata names other weights."""
        digest, _ = weights_digest(paraformer_dir, centroids_path)
        path = default_onnx_path(digest) if onnx_path is None else Path(onnx_path)
        if not path.is_absolute():
            path = PROJECT_ROOT / path
        if not path.is_file():
            raise FileNotFoundError(
                f"vq02 ONNX encoder {path} does not exist; export it with "
                f"`python -m build_scripts.export_vq02_onnx --weights <weights dir> --out {path}`")
        try:
            meta = json.loads(onnx_sidecar_path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            LOG.warning("%s has no metadata sidecar; cannot check it was exported from %s",
                        path, paraformer_dir)
            return path
        recorded = meta.get("weights", {}).get("sha256")
        if recorded != digest:
            raise ValueError(f"{path} was exported from weights {str(recorded)[:12]}, not from the "
                             f"configured weights {digest[:12]}; re-export it")
        return path

    def _encode_graph(self, feats: torch.Tensor, lengths: list[int]) -> np.ndarray:
        on_host = self.engine == "onnx" or not feats.is_cuda
        inputs = graph_inputs(feats, lengths, self.positions)
        if on_host:
            inputs = {name: value.cpu().numpy() for name, value in inputs.items()}
        return self._run_graph(inputs)

    def __call__(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """16 kHz float32 utterances → vq02 codes int32 (16.7 Hz), one array per utterance."""
        feats, lengths = self.frontend.packed(audios)
        if sum(lengths) == 0:
            return [np.zeros(0, np.int32) for _ in audios]
        if self.model is None:
            codes = self._encode_graph(feats, lengths).astype(np.int32, copy=False)
        else:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                                enabled=self.autocast_dtype is not None):
                codes, _ = self.model.encode(feats, lengths)
            codes = codes.to(torch.int32).cpu().numpy()
        return np.split(codes, np.cumsum(lengths)[:-1])
