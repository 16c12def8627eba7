"""Shape limits of the engines (two tokenizer encoders, the flow's DiT), derived from the serving limits.

An engine (TensorRT plan, ONNX Runtime session with the TensorRT provider) must accept every
call the Python models can make. Those calls are bounded by the Triton `max_batch_size` (how
many utterances one execute() gets) and the longest accepted audio:

* vq02 encoder (build_scripts/export_vq02_onnx.py): packed inputs, no batch axis. Dynamic
  axes: `frames` (LFR frames of all utterances, ~16.7 per second), `windows` (4 new frames
  per window, so ceil(T/4) per utterance) and `rows` (one output row per frame).
* vq06 `speech_tokenizer_v1.onnx`: `feats` [B, 128, T], `feats_length` [B] → `indices`
  [B, 1, T']. B = 30 s pieces of all utterances of one call, T ≤ 3000 (a 30 s piece).
* flow estimator (build_scripts/export_flow_onnx.py): x, mu, cond [B, 80, T], mask [B, 1, T],
  t [B], spks [B, 80]. Guidance runs each request twice (conditional, unconditional) in one
  call, so B is 2 to 2 × max_batch_size; T is the mel frames of prompt + target (`flow_frames`).

`derive_limits` gives (min, opt, max) per axis role; `input_profiles` turns them into
min/opt/max shapes per engine input. build_scripts/build_tensorrt.py builds with them and
build_scripts/build_repository.py checks a plan against the repository's limits.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Mapping, Sequence

from ..settings import ALGORITHM as A
from ..settings import LLM

VQ02 = "vq02_encoder"
VQ06 = "vq06_encoder"
FLOW = "flow_estimator"
KINDS = (VQ02, VQ06, FLOW)
DEFAULT_OPT_SECONDS = 10.0
WHISPER_FRAMES_PER_SECOND = A.sample_rate // 160  # whisper_mel hop

# (input name, axis) → role. Axes not listed here fall back to their symbolic name.
AXIS_ROLES: dict[str, dict[str, dict[int, str]]] = {
    VQ02: {"feats": {0: "frames"}, "pos_enc": {0: "frames"}, "window_src": {0: "windows"},
           "window_valid": {0: "windows"}, "window_prev": {0: "windows"},
           "key_mask": {0: "windows"}, "out_rows": {0: "rows"}},
    VQ06: {"feats": {0: "batch", 2: "frames"}, "feats_length": {0: "batch"}},
    FLOW: {**{n: {0: "batch", 2: "frames"} for n in ("x", "mask", "mu", "cond")},
           "t": {0: "batch"}, "spks": {0: "batch"}},
}
# the engine's leading axis is a batch (Triton max_batch_size > 0, dynamic batching)
BATCHED = {VQ02: False, VQ06: True, FLOW: True}
FLOW_INPUTS = ("x", "mask", "mu", "t", "spks", "cond")  # DiT.forward's arguments
GUIDANCE_ROWS = 2  # each request runs conditioned and unconditioned in the same estimator call
MEL_FRAMES_PER_ROW = 2  # the flow's encoder upsamples 25 Hz token rows to 50 Hz mel
ROWS_PER_SECOND = 25  # vq06 rate = token rows per second of prompt audio


class ProfileError(ValueError):
    """The engine's inputs cannot be given a profile; the message says what to pass."""


@dataclasses.dataclass(frozen=True)
class Tensor:
    """An engine input or output: name, ONNX element type name, dims (int or symbolic str)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: Mapping) -> "Tensor":
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


@dataclasses.dataclass(frozen=True)
class Profile:
    """min/opt/max shape of one input."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_json(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, d: Mapping) -> "Profile":
        return cls(tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))


Limits = dict[str, tuple[int, int, int]]  # role → (min, opt, max)


def detect_kind(inputs: Iterable[Tensor]) -> str:
    names = {t.name for t in inputs}
    if {"feats", "window_src", "out_rows"} <= names:
        return VQ02
    if {"feats", "feats_length"} <= names:
        return VQ06
    if set(FLOW_INPUTS) <= names:
        return FLOW
    raise ProfileError(f"inputs {sorted(names)} are neither the vq02 encoder's (feats, pos_enc, "
                       "window_*, key_mask, out_rows), speech_tokenizer_v1's (feats, "
                       "feats_length) nor the flow estimator's (x, mask, mu, t, spks, cond); "
                       "pass --kind")


def vq02_frames(seconds: float) -> int:
    """LFR frames of one utterance of `seconds` (what the streaming frontend emits)."""
    from ..tokenizer.fbank_frontend import stream_frame_count  # torch only when a vq02 limit is asked

    return stream_frame_count(int(round(seconds * A.sample_rate)))


def vq02_windows(frames: int) -> int:
    return -(-frames // A.chunk_new_frames)


def vq06_pieces(seconds: float) -> int:
    """30 s pieces of one utterance of `seconds` (at least one)."""
    return max(1, math.ceil(seconds * A.sample_rate / A.vq06_piece_samples))


def vq06_frames(seconds: float) -> int:
    return min(A.vq06_piece_samples, int(round(seconds * A.sample_rate))) // 160


def flow_rows_of_ids(ids: int) -> int:
    """Token rows of `ids` LLM audio ids: 3 rows per group of 5, the last group padded."""
    return 3 * math.ceil(ids / 5)


def flow_rows_of_seconds(seconds: float) -> int:
    """At most this many token rows come from `seconds` of prompt audio: 25 vq06 codes per
    second, 3 rows per group of 3 (leftover codes are dropped), rounded up to a whole group."""
    return 3 * math.ceil(ROWS_PER_SECOND * seconds / 3)


def flow_frames(max_length: int, max_prompt_seconds: float) -> int:
    """The longest mel the flow can be asked for (its estimator's time axis):

        2 · (3 · ceil(max_length / 5) + 3 · ceil(25 · max_prompt_seconds / 3))

    The target is at most `max_length` LLM ids (the LLM's total-length cap; the prompt's own
    ids would count against it too, but token2wav also takes prompts that did not come
    through the LLM), reshaped to rows, plus the prompt's rows, 2 mel frames per row."""
    return MEL_FRAMES_PER_ROW * (flow_rows_of_ids(max_length) + flow_rows_of_seconds(max_prompt_seconds))


def derive_limits(kind: str, max_batch_size: int, max_audio_seconds: float,
                  opt_batch_size: int | None = None,
                  opt_audio_seconds: float = DEFAULT_OPT_SECONDS, *,
                  max_length: int = LLM.max_length) -> Limits:
    """(min, opt, max) per axis role of `kind` for calls of up to `max_batch_size`
    utterances of up to `max_audio_seconds`; opt is a batch of `opt_batch_size` (default: the
    maximum) utterances of `opt_audio_seconds` (capped at the maximum).

    The flow estimator: `max_batch_size` requests (2 rows each, guidance), prompts of up to
    `max_audio_seconds` and targets of up to `max_length` LLM ids (`flow_frames`); opt is
    `opt_batch_size` requests (default: half the maximum) with a prompt and a target of
    `opt_audio_seconds` each."""
    if max_batch_size < 1:
        raise ProfileError("max batch size must be >= 1")
    if not max_audio_seconds > 0:
        raise ProfileError("max audio seconds must be > 0")
    opt_b = max_batch_size if opt_batch_size is None else min(max(1, opt_batch_size), max_batch_size)
    opt_s = min(max(opt_audio_seconds, 0.5), max_audio_seconds)
    if kind == VQ02:
        max_t, opt_t = vq02_frames(max_audio_seconds), vq02_frames(opt_s)
        if max_t < 1:
            raise ProfileError(f"{max_audio_seconds:g} s gives no vq02 frames")
        opt_t = max(opt_t, 1)
        frames = (1, opt_b * opt_t, max_batch_size * max_t)
        windows = (1, opt_b * vq02_windows(opt_t), max_batch_size * vq02_windows(max_t))
        return {"frames": frames, "windows": windows, "rows": frames}
    if kind == VQ06:
        min_frames = A.vq06_min_piece_samples // 160
        max_frames = vq06_frames(max_audio_seconds)
        opt_frames = max(min_frames, vq06_frames(opt_s))
        per_utt = vq06_pieces(max_audio_seconds)
        return {"batch": (1, opt_b * min(per_utt, vq06_pieces(opt_s)), max_batch_size * per_utt),
                "frames": (min(min_frames, max_frames), opt_frames, max_frames)}
    if kind == FLOW:
        if max_length < 1:
            raise ProfileError("max length must be >= 1 LLM id")
        opt_requests = max(1, max_batch_size // 2) if opt_batch_size is None else opt_b
        max_frames = flow_frames(max_length, max_audio_seconds)
        opt_frames = min(MEL_FRAMES_PER_ROW * 2 * flow_rows_of_seconds(opt_s), max_frames)
        return {"batch": (GUIDANCE_ROWS, GUIDANCE_ROWS * opt_requests, GUIDANCE_ROWS * max_batch_size),
                "frames": (MEL_FRAMES_PER_ROW, opt_frames, max_frames)}
    raise ProfileError(f"unknown engine kind '{kind}' (one of {', '.join(KINDS)})")


def parse_limit(text: str) -> tuple[str, tuple[int, int, int]]:
    """"frames=1:2000:32000" → ("frames", (1, 2000, 32000))."""
    name, sep, values = text.partition("=")
    parts = values.split(":")
    try:
        lo, opt, hi = (int(p) for p in parts)
    except ValueError:
        lo = opt = hi = -1
    if not sep or not name.strip() or len(parts) != 3 or not 1 <= lo <= opt <= hi:
        raise ProfileError(f"limit '{text}' is not NAME=MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX")
    return name.strip(), (lo, opt, hi)


def axis_role(kind: str, tensor: Tensor, axis: int) -> str | None:
    role = AXIS_ROLES.get(kind, {}).get(tensor.name, {}).get(axis)
    if role is None and isinstance(tensor.shape[axis], str):
        role = tensor.shape[axis]
    return role


def input_profiles(kind: str, inputs: Sequence[Tensor], limits: Limits) -> dict[str, Profile]:
    """min/opt/max shapes per input: fixed axes keep their size, dynamic ones take their
    role's limits. An input with a dynamic axis no limit covers is refused."""
    profiles = {}
    for tensor in inputs:
        lo, opt, hi = [], [], []
        for axis, dim in enumerate(tensor.shape):
            if isinstance(dim, int) and dim > 0:
                for seq in (lo, opt, hi):
                    seq.append(dim)
                continue
            role = axis_role(kind, tensor, axis)
            if role not in limits:
                raise ProfileError(
                    f"input '{tensor.name}' axis {axis} is dynamic ({dim!r}) and no limit covers it "
                    f"(known: {', '.join(sorted(limits))}); pass --limit {role or 'NAME'}=MIN:OPT:MAX")
            a, b, c = limits[role]
            lo.append(a)
            opt.append(b)
            hi.append(c)
        profiles[tensor.name] = Profile(tuple(lo), tuple(opt), tuple(hi))
    return profiles


def batch_axis_max(kind: str, inputs: Sequence[Tensor], profiles: Mapping[str, Profile]) -> int:
    """The largest batch every input's profile admits (0 for an engine without a batch axis)."""
    if not BATCHED.get(kind, False):
        return 0
    return min(profiles[t.name].max[0] for t in inputs)


def check_profiles_cover(kind: str, inputs: Sequence[Tensor], profiles: Mapping[str, Profile],
                         needed: Limits) -> list[str]:
    """What in `profiles` is too small for the `needed` limits (empty when they cover them)."""
    problems = []
    for tensor in inputs:
        profile = profiles.get(tensor.name)
        if profile is None:
            problems.append(f"input '{tensor.name}' has no profile")
            continue
        for axis, dim in enumerate(tensor.shape):
            if isinstance(dim, int) and dim > 0:
                continue
            role = axis_role(kind, tensor, axis)
            if role in needed:
                lo, _, hi = needed[role]
                if profile.max[axis] < hi:
                    problems.append(f"input '{tensor.name}' axis {axis} ({role}) allows at most "
                                    f"{profile.max[axis]}, the repository needs {hi}")
                if profile.min[axis] > lo:
                    problems.append(f"input '{tensor.name}' axis {axis} ({role}) needs at least "
                                    f"{profile.min[axis]}, the repository may send {lo}")
    return problems
