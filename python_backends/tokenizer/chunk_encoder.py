"""Step-Audio's streaming SAN-M encoder computed in one batched pass, with k-means folded in.

The original (FunASR `forward_chunk`, chunk_size=[0,4,5], look-back 4) walks 240 ms chunks
one by one. Each chunk's window is [5 previous input rows | 4 new rows]; per layer, FSMN sees
only the window, and attention sees the window plus the K/V of the first 4 rows of the
previous <=4 windows *at the same layer*. Window inputs are slices of the input stream and a
window's K/V depend only on that window's previous layer, so every window of every utterance
in a batch can be computed together, layer by layer (proof: reference/sanm_equiv.py).

Windows of all utterances are packed into one [W, 9, D] tensor (no padding between requests);
look-back keys are gathered by window index and masked when they cross an utterance start.

The numeric core (`ChunkedEncoderQuantizer.forward`) takes that plan as tensors (GRAPH_INPUTS:
gather indices, masks, position encodings), so it traces to one ONNX graph with dynamic frame,
window and output-row counts (build_scripts/export_vq02_onnx.py); `window_plan` builds the plan
in numpy for the torch and onnxruntime engines alike.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..settings import ALGORITHM as A

LAYER_NORM_EPS = 1e-12  # FunASR's LayerNorm


class SanmLayer(nn.Module):
    """One SAN-M encoder layer; parameter names match FunASR's EncoderLayerSANM."""

    def __init__(self, in_size: int, size: int, heads: int, linear_units: int, kernel_size: int):
        super().__init__()
        self.in_size, self.size, self.heads = in_size, size, heads
        self.norm1 = nn.LayerNorm(in_size, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(size, eps=LAYER_NORM_EPS)
        self.self_attn = nn.Module()
        self.self_attn.linear_q_k_v = nn.Linear(in_size, 3 * size)
        self.self_attn.linear_out = nn.Linear(size, size)
        self.self_attn.fsmn_block = nn.Conv1d(size, size, kernel_size, groups=size, bias=False)
        self.feed_forward = nn.Module()
        self.feed_forward.w_1 = nn.Linear(size, linear_units)
        self.feed_forward.w_2 = nn.Linear(linear_units, size)
        self.fsmn_pad = (kernel_size - 1) // 2

    def forward(self, x, valid, key_ok, prev_idx):
        """x [W, R, Din]; valid [W, R, 1] row mask; key_ok [W, 1, 1, L*C+R]; prev_idx [W, L]."""
        W, R, _ = x.shape
        h, C, L = self.heads, A.chunk_new_frames, A.encoder_look_back
        dk = self.size // h
        att = self.self_attn
        q, k, v = att.linear_q_k_v(self.norm1(x)).split(self.size, dim=-1)
        v = v * valid
        fsmn = att.fsmn_block(F.pad(v.transpose(1, 2), (self.fsmn_pad, self.fsmn_pad)))
        fsmn = (fsmn.transpose(1, 2) + v) * valid
        q = q.view(W, R, h, dk).transpose(1, 2) * dk ** -0.5
        k = k.view(W, R, h, dk).transpose(1, 2)
        v = v.view(W, R, h, dk).transpose(1, 2)
        # look-back keys: first C rows of windows w-L..w-1 (index W = all-zero dummy, masked)
        k_stride = torch.cat([k[:, :, :C], k.new_zeros(1, h, C, dk)])
        v_stride = torch.cat([v[:, :, :C], v.new_zeros(1, h, C, dk)])
        k_prev = k_stride[prev_idx].permute(0, 2, 1, 3, 4).reshape(W, h, L * C, dk)
        v_prev = v_stride[prev_idx].permute(0, 2, 1, 3, 4).reshape(W, h, L * C, dk)
        scores = torch.matmul(q, torch.cat([k_prev, k], dim=2).transpose(-2, -1))
        scores = scores.masked_fill(~key_ok, torch.finfo(scores.dtype).min)
        ctx = torch.matmul(torch.softmax(scores, dim=-1), torch.cat([v_prev, v], dim=2))
        attn = att.linear_out(ctx.transpose(1, 2).reshape(W, R, self.size)).add_(fsmn)
        x = attn.add_(x) if self.in_size == self.size else attn
        hidden = self.feed_forward.w_1(self.norm2(x)).relu_()
        return x.add_(self.feed_forward.w_2(hidden))


def sinusoidal_positions(num: int, depth: int) -> torch.Tensor:
    """FunASR StreamSinusoidalPositionEncoder values for 1-based positions 1..num."""
    positions = torch.arange(1, num + 1).to(torch.float32)
    log_inc = torch.log(torch.tensor([10000], dtype=torch.float32)) / (depth / 2 - 1)
    inv = torch.exp(torch.arange(depth / 2).to(torch.float32) * (-log_inc))
    scaled = positions[:, None] * inv[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


class PositionTable:
    """Sinusoidal position encodings, grown on demand and shared by every utterance."""

    def __init__(self, depth: int):
        self.depth = depth
        self._pe = torch.zeros(0, depth)

    def __call__(self, num: int) -> torch.Tensor:
        if len(self._pe) < num:
            self._pe = sinusoidal_positions(max(num, 2 * len(self._pe)), self.depth)
        return self._pe[:num]

    def packed(self, lengths: list[int]) -> torch.Tensor:
        """Encodings of packed frames (each utterance counts from 1), float32 [sum(lengths), depth]."""
        if not lengths:
            return torch.zeros(0, self.depth)
        return torch.cat([self(int(t)) for t in lengths])


# The traced graph's interface (ONNX input/output names, in `forward`'s argument order).
GRAPH_INPUTS = ("feats", "pos_enc", "window_src", "window_valid", "window_prev", "key_mask", "out_rows")
GRAPH_OUTPUTS = ("codes", "enc")


def window_plan(lengths: list[int]) -> dict[str, np.ndarray]:
    """Gather indices and masks of the packed window layout (numpy, cheap), keyed by graph input.

    With W windows in all, R = 9 rows each, L = 4 look-back windows of C = 4 stride rows:
      window_src   int32 [W, R]      row of [zero row | packed inputs] feeding each window row
      window_valid bool  [W, R]      row is a stream input (leading zero rows are; rows past
                                     the utterance's end are not)
      window_prev  int32 [W, L]      windows w-L..w-1 of the same utterance; W = none (masked)
      key_mask     bool  [W, L*C+R]  attention keys: look-back strides, then the window's rows
      out_rows     int32 [N]         row of the flattened [W*R] output kept for each input frame
    """
    C, P, L = A.chunk_new_frames, A.chunk_lookahead, A.encoder_look_back
    R = C + P
    lengths = [int(t) for t in lengths]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    n_win = [(t + C - 1) // C for t in lengths]
    local = np.concatenate([np.zeros(0, np.int64)] + [np.arange(n) for n in n_win]).astype(np.int64)
    owner = np.repeat(np.arange(len(lengths)), n_win)
    frame = local[:, None] * C + np.arange(R)[None, :] - P  # frame index within utterance
    length = np.asarray(lengths, dtype=np.int64)[owner][:, None]
    in_utt = (frame >= 0) & (frame < length)
    src = np.where(in_utt, offsets[owner][:, None] + frame + 1, 0)  # 0 → zero row
    valid = (frame < length)  # leading zero rows are real stream inputs
    W = len(local)
    back = np.arange(L, 0, -1)[None, :]
    prev_idx = np.where(local[:, None] - back >= 0, np.arange(W)[:, None] - back, W)
    key_ok = np.concatenate([np.repeat(prev_idx < W, C, axis=1), valid], axis=1)
    out_rows = (np.arange(W)[:, None] * R + P + np.arange(C)[None, :])[frame[:, P:] < length]
    return {"window_src": src.astype(np.int32), "window_valid": valid,
            "window_prev": prev_idx.astype(np.int32), "key_mask": key_ok,
            "out_rows": out_rows.astype(np.int32)}


class ChunkedEncoderQuantizer(nn.Module):
    """feats of B utterances, packed → vq02 codes (and encoder outputs), exactly as the stream.

    `forward(feats, pos_enc, window_src, window_valid, window_prev, key_mask, out_rows)` is the
    numeric core: tensors only, no data-dependent Python control flow, so it traces to one
    ONNX graph for any number of utterances and lengths. `encode(feats, lengths)` builds the
    plan (`graph_inputs`) and calls it.
    """

    def __init__(self, encoder_conf: dict, input_size: int, centroids: np.ndarray):
        super().__init__()
        d = int(encoder_conf["output_size"])
        heads = int(encoder_conf["attention_heads"])
        units = int(encoder_conf["linear_units"])
        kernel = int(encoder_conf.get("kernel_size", 11))
        blocks = int(encoder_conf["num_blocks"])
        if int(encoder_conf.get("sanm_shfit", 0)) != 0:
            raise ValueError("only sanm_shfit=0 (symmetric FSMN) is supported, as in Step-Audio")
        self.d, self.input_size = d, input_size
        self.encoders0 = nn.ModuleList([SanmLayer(input_size, d, heads, units, kernel)])
        self.encoders = nn.ModuleList([SanmLayer(d, d, heads, units, kernel) for _ in range(blocks - 1)])
        self.after_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        c = torch.as_tensor(np.asarray(centroids, dtype=np.float32))
        if c.ndim != 2 or c.shape[1] != d:
            raise ValueError(f"centroids must be [K, {d}], got {tuple(c.shape)}")
        self.register_buffer("centroids", c)
        self.register_buffer("centroid_sq", (c * c).sum(1))
        self.positions = PositionTable(input_size)

    def load_encoder_state(self, state: dict) -> None:
        self.load_state_dict({**state, "centroids": self.centroids, "centroid_sq": self.centroid_sq},
                             strict=True)

    def graph_inputs(self, feats: torch.Tensor, lengths: list[int]) -> dict[str, torch.Tensor]:
        """`forward`'s inputs, by name, for packed feats [sum(lengths), 560], on feats' device."""
        return graph_inputs(feats, lengths, self.positions)

    def forward(self, feats, pos_enc, window_src, window_valid, window_prev, key_mask, out_rows):
        """Core: feats, pos_enc float32 [T, 560] + plan → codes int32 [N], enc float32 [N, d]."""
        x = feats * math.sqrt(self.d) + pos_enc
        x = torch.cat([x.new_zeros(1, self.input_size), x])[window_src.long()]
        valid = window_valid[:, :, None].to(x.dtype)
        key_ok = key_mask[:, None, None, :]
        prev = window_prev.long()
        for layer in (*self.encoders0, *self.encoders):
            x = layer(x, valid, key_ok, prev)
        enc = self.after_norm(x.reshape(-1, self.d)[out_rows.long()])
        dist = torch.addmm(self.centroid_sq[None, :], enc, self.centroids.t(), alpha=-2.0)
        return dist.argmin(dim=1).to(torch.int32), enc

    @torch.inference_mode()
    def encode(self, feats: torch.Tensor, lengths: list[int]):
        """feats: packed float32 [sum(lengths), 560] → (codes int32 [sum], enc float32 [sum, d])."""
        inputs = self.graph_inputs(feats, lengths)
        return self.forward(*(inputs[name] for name in GRAPH_INPUTS))


def graph_inputs(feats: torch.Tensor, lengths: list[int], positions: PositionTable) -> dict[str, torch.Tensor]:
    """The core's inputs, keyed by GRAPH_INPUTS names, for packed feats [sum(lengths), 560]."""
    plan = window_plan(lengths)
    pe = positions.packed(lengths).to(feats.device, feats.dtype)
    return {"feats": feats, "pos_enc": pe,
            **{k: torch.from_numpy(v).to(feats.device) for k, v in plan.items()}}
