"""LLM audio tokens → the flow's 25 Hz rows (EditX `CosyVoice_stream_impl_._reshape`, spec §2.6).

The LLM emits a mixed sequence in groups of five: 2 vq02 codes (16.7 Hz) then 3 vq06 codes
(25 Hz, 1024-based). The flow wants time-aligned rows (vq02 or pad, vq06 + 1), three per group:
`[a, b, c, d, e]` → `(a, c+1), (b, d+1), (1024, e+1)`. A sequence whose length is not a
multiple of 5 is padded with the tail of `[0, 0, 0, 1024, 1024, 1024]` first, as upstream does
(its tail audio is wrong anyway).

Ids that are not audio tokens (LLM text ids, so negative after −65536) are kept as they are:
the flow clamps ids below 0 to 0 when it embeds them, exactly as the original does.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..settings import DECODER, LLM

GROUP = 5
PAD_TAIL = (0, 0, 0, DECODER.vq02_pad, DECODER.vq02_pad, DECODER.vq02_pad)


def codes_from_token_ids(token_ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """LLM ids (generated, or the tokenizer's merged prompt ids; `<audio_N>` = 65536 + N) →
    mixed codes N as int64 (non-audio ids come out negative and are kept)."""
    return np.asarray(token_ids, dtype=np.int64).reshape(-1) - LLM.audio_token_offset


def reshape_mixed_codes(codes: np.ndarray | Sequence[int]) -> np.ndarray:
    """Mixed codes [N] → int64 [3·ceil(N/5), 2] rows (vq02 column, vq06 column)."""
    mixed = np.asarray(codes, dtype=np.int64).reshape(-1)
    short = (-len(mixed)) % GROUP
    if short:
        mixed = np.concatenate([mixed, np.asarray(PAD_TAIL[-short:], np.int64)])
    groups = mixed.reshape(-1, GROUP)
    rows = np.empty((len(groups), 3, 2), np.int64)
    rows[:, :2, 0] = groups[:, :2]
    rows[:, 2, 0] = DECODER.vq02_pad
    rows[:, :, 1] = groups[:, 2:] + (DECODER.vq06_shift - DECODER.vq02_pad)
    return rows.reshape(-1, 2)


def reshape_token_ids(token_ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """LLM ids → flow rows: `reshape_mixed_codes(codes_from_token_ids(ids))`."""
    return reshape_mixed_codes(codes_from_token_ids(token_ids))
