"""The flow's token encoder: dual-codebook embedding + `UpsampleConformerEncoderV2`.

Attribute names follow the release's module tree, so `flow.pt` tensors (`encoder.embed.out.0.weight`,
`encoder.encoders.3.self_attn.pos_bias_u`, …) load as they are. `forward` is the non-streaming
pass: full attention with a key-padding mask, so padded requests in a batch leave the others
untouched. `forward_chunk` is upstream's streaming pass (`UpsampleConformerEncoderV2.forward_chunk`)
for a batch of streams at different positions: each stream's new rows attend to its cached keys
and to each other (no mask beyond padding), convolutions continue from cached frames.
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

    def forward_chunk(self, x: torch.Tensor, rows: torch.Tensor, cache: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, N, D] (each stream's rows then its look-ahead rows, zeros for a last chunk);
        rows [B] output rows (N − look-ahead at most); cache [B, D, 2]: the last two conv1
        outputs so far → ([B, N − look-ahead, D], new cache)."""
        y = F.leaky_relu(self.conv1(x.transpose(1, 2)))
        new_cache = last_frames(y, rows, 2)
        y = self.conv2(torch.cat([cache, y], dim=2))
        return y.transpose(1, 2) + x[:, :y.shape[2]], new_cache


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

    def forward_chunk(self, x: torch.Tensor, rows: torch.Tensor, cache: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D], rows [B] valid; cache [B, D, 2·stride] upsampled frames so far."""
        y = F.interpolate(x.transpose(1, 2), scale_factor=self.scale_factor, mode="nearest")
        y = torch.cat([cache, y], dim=2)
        new_cache = last_frames(y, rows * self.stride + 2 * self.stride, 2 * self.stride)
        return self.conv(y).transpose(1, 2), new_cache


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

    def forward_chunk(self, x: torch.Tensor, rows: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, cached: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, Q, D] new frames (first rows[b] real) at positions cached[b] + i; k/v_cache
        [B, H, C, d_k] (first cached[b] real) → (out [B, Q, D], new k, new v [B, H, Q, d_k]).

        Keys are laid out [cache ‖ new]; the relative position of query i to key slot j is that
        stream's absolute distance, as upstream's rel_shift gives for a query block at an offset."""
        b, t, _ = x.shape
        c = k_cache.shape[2]
        dev = x.device
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        span = c + t
        new_pos = cached[:, None] + torch.arange(t, device=dev)[None, :]
        key_pos = torch.cat([torch.arange(c, device=dev)[None, :].expand(b, -1), new_pos], dim=1)
        key_ok = torch.cat([torch.arange(c, device=dev)[None, :] < cached[:, None],
                            torch.arange(t, device=dev)[None, :] < rows[:, None]], dim=1)
        table = rel_position_table(span, x.shape[2], dev, x.dtype)  # span-1 … -(span-1)
        p = self.linear_pos(table).view(-1, self.h, self.d_k).transpose(0, 1)
        bd = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(1, 2))
        index = (span - 1) - (new_pos[:, :, None] - key_pos[:, None, :])
        bd = torch.gather(bd, 3, index[:, None].expand(b, self.h, t, span))
        bias = torch.zeros(key_ok.shape, dtype=x.dtype, device=dev)
        bias = bias.masked_fill(~key_ok, float("-inf"))[:, None, None, :]
        out = F.scaled_dot_product_attention(
            (q + self.pos_bias_u).transpose(1, 2), torch.cat([k_cache, k], dim=2),
            torch.cat([v_cache, v], dim=2), attn_mask=bd / math.sqrt(self.d_k) + bias)
        return self.linear_out(out.transpose(1, 2).reshape(b, t, self.h * self.d_k)), k, v


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

    def forward_chunk(self, x: torch.Tensor, rows: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, cached: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        att, k, v = self.self_attn.forward_chunk(self.norm_mha(x), rows, k_cache, v_cache, cached)
        x = x + att
        return x + self.feed_forward(self.norm_ff(x)), k, v


def last_frames(x: torch.Tensor, ends: torch.Tensor, n: int) -> torch.Tensor:
    """x [B, C, T] → [B, C, n]: frames ends[b]−n … ends[b]−1 of each row (a conv cache)."""
    index = ends[:, None] - n + torch.arange(n, device=x.device)[None, :]
    return torch.gather(x, 2, index[:, None, :].expand(-1, x.shape[1], -1))


@dataclasses.dataclass
class EncoderChunkCache:
    """The encoder's streaming state for a batch (padded): conv frames and attention keys/values
    per layer. `rows` [B] token rows cached; the up blocks hold stride·rows frames."""

    lookahead: torch.Tensor  # [B, D, 2] last two conv1 outputs of the look-ahead layer
    up: torch.Tensor  # [B, D, 2·stride] last upsampled frames
    k: torch.Tensor  # [num_blocks, B, H, rows_max, d_k]
    v: torch.Tensor
    up_k: torch.Tensor  # [num_up_blocks, B, H, stride·rows_max, d_k]
    up_v: torch.Tensor
    rows: torch.Tensor  # [B] int64


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

    def forward_chunk(self, xs: torch.Tensor, real_rows: torch.Tensor, rows: torch.Tensor,
                      cache: EncoderChunkCache) -> tuple[torch.Tensor, EncoderChunkCache]:
        """One streaming step of B streams. xs [B, N, input_size] embedded rows, real_rows [B]
        rows given per stream (rows[b] + look-ahead, or rows[b] alone for a stream's last chunk,
        whose look-ahead upstream fills with zeros after `embed`); rows [B] output rows.
        → ([B, stride·(N − look-ahead), D], valid stride·rows[b]; the new frames' state, keys
        and values for the new rows only: the caller appends them to its caches)."""
        t = xs.shape[1]
        xs = self.embed(xs)
        xs = xs * (torch.arange(t, device=xs.device)[None, :, None] < real_rows[:, None, None])
        xs, lookahead = self.pre_lookahead_layer.forward_chunk(xs, rows, cache.lookahead)
        ks, vs = [], []
        for i, layer in enumerate(self.encoders):
            xs, k, v = layer.forward_chunk(xs, rows, cache.k[i], cache.v[i], cache.rows)
            ks.append(k)
            vs.append(v)
        xs, up = self.up_layer.forward_chunk(xs, rows, cache.up)
        xs = self.up_embed(xs)
        stride = self.up_layer.stride
        up_ks, up_vs = [], []
        for i, layer in enumerate(self.up_encoders):
            xs, k, v = layer.forward_chunk(xs, rows * stride, cache.up_k[i], cache.up_v[i],
                                           cache.rows * stride)
            up_ks.append(k)
            up_vs.append(v)
        new = EncoderChunkCache(lookahead, up, torch.stack(ks), torch.stack(vs),
                                torch.stack(up_ks), torch.stack(up_vs), rows)
        return self.after_norm(xs), new

    def _blocks(self, layers: nn.ModuleList, xs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        bias = key_padding_bias(lengths, xs.shape[1], xs.dtype)
        table = rel_position_table(xs.shape[1], xs.shape[2], xs.device, xs.dtype)
        for layer in layers:
            xs = layer(xs, bias, table)
        return xs
