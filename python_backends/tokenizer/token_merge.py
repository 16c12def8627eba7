"""The 2:3 interleave of vq02 and vq06 codes (Step-Audio `wav2token` / `merge_vq0206_to_token_str`).

Groups of 2 vq02 codes then 3 vq06 codes; leftovers that do not fill a group are dropped.
LLM ids are 65536 + N with N = vq02 code or 1024 + vq06 code; the prompt string renders
each as `<audio_N>`.
"""
from __future__ import annotations

import numpy as np

from ..settings import ALGORITHM as A


def merge_tokens(vq02: np.ndarray, vq06: np.ndarray) -> tuple[np.ndarray, str]:
    """→ (LLM token ids int32 [5·G], prompt string of `<audio_N>` tokens)."""
    groups = min(len(vq02) // A.group_vq02, len(vq06) // A.group_vq06)
    a = np.asarray(vq02[:groups * A.group_vq02], np.int64).reshape(groups, A.group_vq02)
    b = np.asarray(vq06[:groups * A.group_vq06], np.int64).reshape(groups, A.group_vq06)
    audio_ids = np.concatenate([a, b + A.vq02_codes], axis=1).reshape(-1)
    token_str = "".join(f"<audio_{n}>" for n in audio_ids.tolist())
    return (audio_ids + A.audio_token_offset).astype(np.int32), token_str
