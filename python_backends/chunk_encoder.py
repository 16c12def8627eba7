"""Step-Audio's streaming SAN-M encoder computed in one batched pass, with k-means folded in.

The original (FunASR `forward_chunk`, chunk_size=[0,4,5], look-back 4) walks 240 ms chunks
one by one. Each chunk's window is [5 previous input rows | 4 new rows]; per layer, FSMN sees
only the window, and attention sees the window plus the K/V of the first 4 rows of the
previous <=4 windows *at the same layer*. Window inputs are slices of the input stream and a
window's K/V depend only on that window's previous layer, so every window of every utterance
in a batch can be computed together, layer by layer (proof: reference/sanm_equiv.py).

Windows of all utterances are packed into one [W, 9, D] tensor (no padding between requests);
look-back keys are gathered by window index and masked when they cross an utterance start.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .settings import ALGORITHM as A

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


class ChunkedEncoderQuantizer(nn.Module):
    """feats of B utterances, packed → vq02 codes (and encoder outputs), exactly as the stream."""

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
        self._pe = torch.zeros(0, input_size)

    def load_encoder_state(self, state: dict) -> None:
        self.load_state_dict({**state, "centroids": self.centroids, "centroid_sq": self.centroid_sq},
                             strict=True)

    def _positions(self, num: int) -> torch.Tensor:
        if len(self._pe) < num:
            self._pe = sinusoidal_positions(max(num, 2 * len(self._pe)), self.input_size)
        return self._pe[:num]

    @staticmethod
    def window_plan(lengths: list[int]):
        """Gather indices for the packed window layout (numpy, cheap)."""
        C, P, L = A.chunk_new_frames, A.chunk_lookahead, A.encoder_look_back
        R = C + P
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        n_win = [(t + C - 1) // C for t in lengths]
        local = np.concatenate([np.arange(n) for n in n_win]).astype(np.int64)
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
        return src, valid, prev_idx, key_ok, out_rows

    @torch.inference_mode()
    def forward(self, feats: torch.Tensor, lengths: list[int]):
        """feats: packed float32 [sum(lengths), 560] → (codes int64 [sum], enc float32 [sum, d])."""
        src, valid, prev_idx, key_ok, out_rows = self.window_plan(lengths)
        pe = torch.cat([self._positions(t) for t in lengths]) if lengths else feats[:0]
        x = feats * math.sqrt(self.d) + pe
        x = torch.cat([x.new_zeros(1, self.input_size), x])[torch.from_numpy(src)]
        valid_t = torch.from_numpy(valid)[:, :, None].to(x.dtype)
        key_ok_t = torch.from_numpy(key_ok)[:, None, None, :]
        prev_t = torch.from_numpy(prev_idx)
        for layer in (*self.encoders0, *self.encoders):
            x = layer(x, valid_t, key_ok_t, prev_t)
        enc = self.after_norm(x.reshape(-1, self.d)[torch.from_numpy(out_rows)])
        dist = torch.addmm(self.centroid_sq[None, :], enc, self.centroids.t(), alpha=-2.0)
        return dist.argmin(dim=1), enc
