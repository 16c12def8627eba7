"""Real input data for perf_analyzer's `--input-data` JSON, per model of the tokenizer.

- `audio_tokenizer`, `preprocess`: espeak-ng speech as a client sends it (`waveform` float32 at
  22.05 kHz, `sample_rate`, and `channels` unless `send_channels=False`).
- `vq02`, `vq06`: the 16 kHz, normalised, trimmed `audio_16k` that `preprocess` makes of that
  speech (`python_backends.tokenizer.preprocess.preprocess` with default `TokenizerSettings` limits).
- `token_merge`: the real `vq02_codes` / `vq06_codes` of that speech, from a `codes` callable
  (the sweep asks the server's ensemble, so the codes match the served weights).

Every variable-length tensor carries its `shape` (perf_analyzer refuses a [-1] input without
one). Large tensors are written as base64 of little-endian bytes (`"b64"`, about 4/3 of the raw
size; perf_analyzer decodes it with libb64) or, with `encoding="content"`, as a flat JSON list
(exact for float32 too, but about 3x larger). Shapes leave out the batch dimension: each request
carries one utterance (perf_analyzer's `-b 1`).
"""
from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np

MODELS = ("audio_tokenizer", "preprocess", "vq02", "vq06", "token_merge")
MEMBERS = ("preprocess", "vq02", "vq06", "token_merge")
MODEL_INPUTS = {
    "audio_tokenizer": ("waveform", "sample_rate", "channels"),
    "preprocess": ("waveform", "sample_rate", "channels"),
    "vq02": ("audio_16k",),
    "vq06": ("audio_16k",),
    "token_merge": ("vq02_codes", "vq06_codes"),
}
INPUT_DTYPES = {
    "waveform": np.dtype("<f4"),
    "sample_rate": np.dtype("<i4"),
    "channels": np.dtype("<i4"),
    "audio_16k": np.dtype("<f4"),
    "vq02_codes": np.dtype("<i4"),
    "vq06_codes": np.dtype("<i4"),
}
TRITON_DTYPES = {np.dtype("<f4"): "FP32", np.dtype("<i4"): "INT32"}
OPTIONAL_INPUTS = ("channels",)
ENCODINGS = ("b64", "content")
CLIP_SEED_BASE = 1000  # apart from the seeds tests (0..9) and the synthetic codebooks (100+) use

# (vq02 codes, vq06 codes) of one clip
CodesFn = Callable[["Clip"], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Clip:
    """One test utterance: mono float32 samples at `rate`."""

    seconds: float
    seed: int
    audio: np.ndarray
    rate: int

    def __repr__(self) -> str:
        return f"Clip({self.seconds:g} s, seed {self.seed}, {self.audio.size} samples at {self.rate} Hz)"


def speech_clips(seconds: float, count: int = 1, seed: int = CLIP_SEED_BASE) -> list[Clip]:
    """`count` different espeak-ng utterances of exactly `seconds` each (seeds seed, seed+1, ...)."""
    from build_scripts.espeak_clips import speech_of_duration

    clips = []
    for i in range(count):
        audio, rate = speech_of_duration(seconds, seed=seed + i)
        clips.append(Clip(float(seconds), seed + i, np.ascontiguousarray(audio, np.float32), int(rate)))
    return clips


def preprocessed(clip: Clip, settings=None) -> np.ndarray:
    """The `audio_16k` the `preprocess` model makes of `clip`."""
    from python_backends.tokenizer.preprocess import preprocess
    from python_backends.settings import TokenizerSettings

    settings = settings or TokenizerSettings(weights_dir="")
    return preprocess(clip.audio, clip.rate, settings, channels=1)


def model_arrays(model: str, clip: Clip, codes: CodesFn | None = None, settings=None,
                 send_channels: bool = True) -> dict[str, np.ndarray]:
    """The input tensors (without the batch dimension) of one `model` request for `clip`."""
    if model in ("audio_tokenizer", "preprocess"):
        arrays = {"waveform": clip.audio.astype(np.float32, copy=False),
                  "sample_rate": np.array([clip.rate], np.int32)}
        if send_channels:
            arrays["channels"] = np.array([1], np.int32)
    elif model in ("vq02", "vq06"):
        arrays = {"audio_16k": preprocessed(clip, settings)}
    elif model == "token_merge":
        if codes is None:
            raise ValueError("token_merge inputs need the clip's codes: pass `codes`")
        vq02, vq06 = codes(clip)
        arrays = {"vq02_codes": np.asarray(vq02, np.int32).reshape(-1),
                  "vq06_codes": np.asarray(vq06, np.int32).reshape(-1)}
    else:
        raise ValueError(f"unknown model '{model}'; one of {', '.join(MODELS)}")
    return {name: np.ascontiguousarray(a, INPUT_DTYPES[name]) for name, a in arrays.items()}


def tensor_json(name: str, array: np.ndarray, encoding: str = "b64") -> dict:
    """One input of one perf_analyzer data step: {"shape": [...], "b64" | "content": ...}.
    Scalars ([1]) are always written as `content`: they are tiny and stay readable."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, not '{encoding}'")
    array = np.ascontiguousarray(array, INPUT_DTYPES[name])
    entry: dict = {"shape": list(array.shape)}
    if encoding == "b64" and array.size > 1:
        entry["b64"] = base64.b64encode(array.tobytes()).decode("ascii")
    else:
        entry["content"] = array.reshape(-1).tolist()
    return entry


def input_data(model: str, clips: list[Clip], codes: CodesFn | None = None, settings=None,
               encoding: str = "b64", send_channels: bool = True) -> dict:
    """perf_analyzer's `--input-data` document: one data step per clip, used round-robin."""
    steps = []
    for clip in clips:
        arrays = model_arrays(model, clip, codes, settings, send_channels)
        steps.append({name: tensor_json(name, a, encoding) for name, a in arrays.items()})
    return {"data": steps}


def write_input_data(path: str | Path, doc: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, separators=(",", ":")), encoding="ascii")
    return path


def decode_step(step: dict) -> dict[str, np.ndarray]:
    """One data step back to arrays (the inverse of `tensor_json`; a perf_analyzer stand-in)."""
    out = {}
    for name, entry in step.items():
        dtype = INPUT_DTYPES[name]
        if isinstance(entry, list):  # the bare-list form perf_analyzer also reads
            entry = {"content": entry, "shape": [len(entry)]}
        if "b64" in entry:
            array = np.frombuffer(base64.b64decode(entry["b64"]), dtype=dtype)
        else:
            array = np.asarray(entry["content"], dtype=dtype)
        shape = entry.get("shape", list(array.shape))
        if int(np.prod(shape)) != array.size:
            raise ValueError(f"input '{name}': shape {shape} does not fit {array.size} values")
        out[name] = array.reshape(shape)
    return out


def decode_input_data(doc: dict) -> list[dict[str, np.ndarray]]:
    return [decode_step(step) for step in doc["data"]]
