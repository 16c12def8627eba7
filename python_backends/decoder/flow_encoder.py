"""The flow's token encoder: dual-codebook embedding + `UpsampleConformerEncoderV2`.

Attribute names follow the release's module tree, so `flow.pt` tensors (`encoder.embed.out.0.weight`,
`encoder.encoders.3.self_attn.pos_bias_u`, …) load as they are. Non-streaming only: full
attention with a key-padding mask, so padded requests in a batch leave the others untouched.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


class DualCodebookEmbedding(nn.Module):
    """One table for both columns (vq02 ids and shifted vq06 ids), halves concatenated."""

    def __init__(self, vocab_size: int, input_size: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, input_size // 2)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.embedding(rows[..., 0]), self.embedding(rows[..., 1])], dim=-1)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    input_size: int = 512
    output_size: int = 512
    pre_lookahead_len: int = 3
    num_blocks: int = 6
    num_up_blocks: int = 4
    up_stride: int = 2
    up_scale_factor: float = 2.0
    attention_heads: int = 8
    key_bias: bool = True
    linear_units: int = 2048


def rel_position_table(length: int, d_model: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """ESPnet relative positions length-1 … -(length-1): [2·length-1, d_model], sin/cos interleaved."""
    positions = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=device)
                    * -(math.log(10000.0) / d_model))
    angles = positions[:, None] * div[None, :]
    table = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(1)
    return table.to(dtype)


class LinearInput(nn.Module):
    """`LinearNoSubsampling`: Linear + LayerNorm, then ×√d (the rel-PE layer adds nothing to x)."""

    def __init__(self, idim: int, odim: int):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(idim, odim), nn.LayerNorm(odim, eps=1e-5))
        self.xscale = math.sqrt(odim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) * self.xscale


class PreLookaheadLayer(nn.Module):
    def __init__(self, channels: int, pre_lookahead_len: int):
        super().__init__()
        self.pre_lookahead_len = pre_lookahead_len
        self.conv1 = nn.Conv1d(channels, channels, pre_lookahead_len + 1)
        self.conv2 = nn.Conv1d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pad(x.transpose(1, 2), (0, self.pre_lookahead_len))
        y = F.leaky_relu(self.conv1(y))
        y = self.conv2(F.pad(y, (2, 0)))
        return y.transpose(1, 2) + x


class Upsample1D(nn.Module):
    """Nearest ×stride, then a causal conv (left pad 2·stride, kernel 2·stride+1)."""

    def __init__(self, channels: int, stride: int, scale_factor: float):
        super().__init__()
        self.stride = stride
        self.scale_factor = float(scale_factor)
        self.conv = nn.Conv1d(channels, channels, stride * 2 + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.interpolate(x.transpose(1, 2), scale_factor=self.scale_factor, mode="nearest")
        return self.conv(F.pad(y, (self.stride * 2, 0))).transpose(1, 2)


class RelPositionMultiHeadedAttention(nn.Module):
    """Transformer-XL attention: score(i, j) = ((q_i+u)·k_j + (q_i+v)·p_{i-j}) / √d_k."""

    def __init__(self, n_head: int, n_feat: int, key_bias: bool):
        super().__init__()
        self.h, self.d_k = n_head, n_feat // n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat, bias=key_bias)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(self.h, self.d_k))

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor, pos_table: torch.Tensor) -> torch.Tensor:
        """x [B, T, D]; key_bias [B, 1, 1, T] (0 or -inf); pos_table [2T-1, D]."""
        b, t, _ = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_table).view(-1, self.h, self.d_k).transpose(0, 1)
        bd = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(1, 2))
        # column (t-1) - i + j of row i holds relative position i - j
        index = (torch.arange(t, device=x.device)[None, :]
                 - torch.arange(t, device=x.device)[:, None] + (t - 1))
        bd = torch.gather(bd, 3, index.expand(b, self.h, t, t))
        out = F.scaled_dot_product_attention((q + self.pos_bias_u).transpose(1, 2), k, v,
                                             attn_mask=bd / math.sqrt(self.d_k) + key_bias)
        return self.linear_out(out.transpose(1, 2).reshape(b, t, self.h * self.d_k))


class PositionwiseFeedForward(nn.Module):
    def __init__(self, idim: int, hidden_units: int):
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden_units)
        self.w_2 = nn.Linear(hidden_units, idim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerEncoderLayer(nn.Module):
    """Pre-norm attention + feed-forward (the release has no conv or macaron modules)."""

    def __init__(self, size: int, heads: int, linear_units: int, key_bias: bool):
        super().__init__()
        self.self_attn = RelPositionMultiHeadedAttention(heads, size, key_bias)
        self.feed_forward = PositionwiseFeedForward(size, linear_units)
        self.norm_ff = nn.LayerNorm(size, eps=1e-12)
        self.norm_mha = nn.LayerNorm(size, eps=1e-12)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor, pos_table: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), key_bias, pos_table)
        return x + self.feed_forward(self.norm_ff(x))


def key_padding_bias(lengths: torch.Tensor, frames: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, 1, frames]: 0 for a request's own frames, -inf for its padding."""
    valid = torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]
    bias = torch.zeros(valid.shape, dtype=dtype, device=lengths.device)
    return bias.masked_fill(~valid, float("-inf"))[:, None, None, :]


class UpsampleConformerEncoderV2(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        d = cfg.output_size

        def blocks(n: int) -> nn.ModuleList:
            return nn.ModuleList(ConformerEncoderLayer(d, cfg.attention_heads, cfg.linear_units,
                                                       cfg.key_bias) for _ in range(n))

        self.cfg = cfg
        self.embed = LinearInput(cfg.input_size, d)
        self.pre_lookahead_layer = PreLookaheadLayer(d, cfg.pre_lookahead_len)
        self.encoders = blocks(cfg.num_blocks)
        self.up_layer = Upsample1D(d, cfg.up_stride, cfg.up_scale_factor)
        self.up_embed = LinearInput(cfg.input_size, d)
        self.up_encoders = blocks(cfg.num_up_blocks)
        self.after_norm = nn.LayerNorm(d, eps=1e-5)

    def forward(self, xs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """xs [B, T, input_size] (zero past each length) → [B, stride·T, output_size]."""
        t = xs.shape[1]
        xs = self.embed(xs)
        # a lone request's look-ahead conv sees zeros past its end: give batched ones the same
        valid = torch.arange(t, device=xs.device)[None, :, None] < lengths[:, None, None]
        xs = self.pre_lookahead_layer(xs * valid)
        xs = self._blocks(self.encoders, xs, lengths)
        xs = self.up_embed(self.up_layer(xs))
        xs = self._blocks(self.up_encoders, xs, lengths * self.up_layer.stride)
        return self.after_norm(xs)

    def _blocks(self, layers: nn.ModuleList, xs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        bias = key_padding_bias(lengths, xs.shape[1], xs.dtype)
        table = rel_position_table(xs.shape[1], xs.shape[2], xs.device, xs.dtype)
        for layer in layers:
            xs = layer(xs, bias, table)
        return xs
