"""The flow's velocity estimator: the StepFun DiT (`decoder.estimator` in `flow.pt`).

Input channels are x ‖ mu ‖ speaker (broadcast over time) ‖ cond. Each block is adaLN with 9
modulations (attention, causal conv branch, MLP), q/k LayerNorm, full attention over the
frames the mask keeps. `forward(x, mask, mu, t, spks, cond)` is the export signature
(ONNX → TensorRT), as in Step-Audio2's TensorRT token2wav. `forward_chunk` is upstream's
streaming pass (`DiT.forward_chunk`) for a batch of streams: new frames attend to themselves
and to each stream's cached keys/values, the conv branch continues from its cached frames.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

FREQUENCY_EMBEDDING_SIZE = 256
TIME_SCALE = 1000.0


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    in_channels: int = 320
    out_channels: int = 80
    mlp_ratio: float = 4.0
    depth: int = 16
    num_heads: int = 8
    head_dim: int = 64
    hidden_size: int = 512


def timestep_frequencies(t: torch.Tensor, dim: int = FREQUENCY_EMBEDDING_SIZE) -> torch.Tensor:
    """[B] → [B, dim]: cos ‖ sin of (1000·t) at geometric frequencies 1 … 1/10000."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half).to(t.dtype)
    args = (t * TIME_SCALE)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _last_frames(x: torch.Tensor, ends: torch.Tensor, n: int) -> torch.Tensor:
    """x [B, C, T] → frames ends[b]−n … ends[b]−1 of each row, [B, C, n]."""
    index = ends[:, None] - n + torch.arange(n, device=x.device)[None, :]
    return torch.gather(x, 2, index[:, None, :].expand(-1, x.shape[1], -1))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def plain_norm(x: torch.Tensor, size: int) -> torch.Tensor:
    """LayerNorm without affine parameters (`size` is static so the ONNX export stays shape-free)."""
    return F.layer_norm(x, (size,), eps=1e-6)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_EMBEDDING_SIZE, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_frequencies(t))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.q_norm = nn.LayerNorm(head_dim)
        self.k_norm = nn.LayerNorm(head_dim)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, C]; attn_mask bool [B, 1, 1, T] (True: attend)."""
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

        q = self.q_norm(heads(self.to_q(x)))
        k = self.k_norm(heads(self.to_k(x)))
        out = F.scaled_dot_product_attention(q, k, heads(self.to_v(x)), attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))

    def forward_chunk(self, x: torch.Tensor, frames: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, cached: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, C] (first frames[b] real); k/v_cache [B, H, S, head_dim] (first cached[b]
        real) → (out, new k, new v [B, H, T, head_dim]). Keys are [new ‖ cache], as upstream."""
        b, t, _ = x.shape
        dev = x.device

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

        q = self.q_norm(heads(self.to_q(x)))
        k = self.k_norm(heads(self.to_k(x)))
        v = heads(self.to_v(x))
        keep = torch.cat([torch.arange(t, device=dev)[None, :] < frames[:, None],
                          torch.arange(k_cache.shape[2], device=dev)[None, :] < cached[:, None]],
                         dim=1)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, torch.cat([k, k_cache], dim=2),
                                             torch.cat([v, v_cache], dim=2), attn_mask=keep)
        return self.proj(out.transpose(1, 2).reshape(b, t, -1)), k, v


class CausalConvBlock(nn.Module):
    """conv k3 (left pad 2) → LayerNorm → Mish → conv k3; a frame sees only itself and the past.

    The parameterless slots keep the release's Sequential indices (`block.1`, `block.3`, `block.6`).
    """

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.pad = kernel_size - 1
        self.block = nn.ModuleList([
            nn.Identity(), nn.Conv1d(channels, channels, kernel_size), nn.Identity(),
            nn.LayerNorm(channels), nn.Mish(),
            nn.Identity(), nn.Conv1d(channels, channels, kernel_size), nn.Identity(),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block[1](F.pad(x.transpose(1, 2), (self.pad, 0))).transpose(1, 2)
        y = self.block[4](self.block[3](y))
        return self.block[6](F.pad(y.transpose(1, 2), (self.pad, 0))).transpose(1, 2)

    def forward_chunk(self, x: torch.Tensor, frames: torch.Tensor, cache: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, C] (first frames[b] real); cache [B, 2C, pad]: each conv's last input
        frames (conv1's channels first) → (y [B, T, C], new cache)."""
        c1, c2 = cache.split(cache.shape[1] // 2, dim=1)
        h = torch.cat([c1, x.transpose(1, 2)], dim=2)
        new1 = _last_frames(h, frames + self.pad, self.pad)
        y = self.block[4](self.block[3](self.block[1](h).transpose(1, 2)))
        h = torch.cat([c2, y.transpose(1, 2)], dim=2)
        new2 = _last_frames(h, frames + self.pad, self.pad)
        return self.block[6](h).transpose(1, 2), torch.cat([new1, new2], dim=1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        h = cfg.hidden_size
        self.attn = Attention(h, cfg.num_heads, cfg.head_dim)
        self.mlp = Mlp(h, int(h * cfg.mlp_ratio))
        self.conv = CausalConvBlock(h)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(h, 9 * h))
        self.hidden = h

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp,
         shift_conv, scale_conv, gate_conv) = self.adaLN_modulation(c).chunk(9, dim=-1)
        x = x + gate_msa * self.attn(modulate(plain_norm(x, self.hidden), shift_msa, scale_msa),
                                     attn_mask)
        x = x + gate_conv * self.conv(modulate(plain_norm(x, self.hidden), shift_conv, scale_conv))
        return x + gate_mlp * self.mlp(modulate(plain_norm(x, self.hidden), shift_mlp, scale_mlp))

    def forward_chunk(self, x: torch.Tensor, c: torch.Tensor, frames: torch.Tensor,
                      cnn_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      cached: torch.Tensor):
        (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp,
         shift_conv, scale_conv, gate_conv) = self.adaLN_modulation(c).chunk(9, dim=-1)
        att, k, v = self.attn.forward_chunk(
            modulate(plain_norm(x, self.hidden), shift_msa, scale_msa), frames, k_cache, v_cache,
            cached)
        x = x + gate_msa * att
        conv, cnn = self.conv.forward_chunk(
            modulate(plain_norm(x, self.hidden), shift_conv, scale_conv), frames, cnn_cache)
        x = x + gate_conv * conv
        x = x + gate_mlp * self.mlp(modulate(plain_norm(x, self.hidden), shift_mlp, scale_mlp))
        return x, cnn, k, v


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, out_channels: int):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.linear = nn.Linear(hidden_size, out_channels)
        self.hidden = hidden_size

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(plain_norm(x, self.hidden), shift, scale))


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        self.out_channels = cfg.out_channels
        self.t_embedder = TimestepEmbedder(cfg.hidden_size)
        self.in_proj = nn.Linear(cfg.in_channels, cfg.hidden_size)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg.hidden_size, cfg.out_channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                spks: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x, mu, cond [B, 80, T]; mask [B, 1, T] (nonzero: a real frame); t [B]; spks [B, 80]
        → velocity [B, 80, T]."""
        c = self.t_embedder(t)[:, None, :]
        frames = x.shape[2]
        h = torch.cat([x, mu, spks[:, :, None].expand(-1, -1, frames), cond], dim=1)
        h = self.in_proj(h.transpose(1, 2))
        attn_mask = mask.bool()[:, :, None, :]
        for block in self.blocks:
            h = block(h, c, attn_mask)
        return self.final_layer(h, c).transpose(1, 2)

    def forward_chunk(self, x: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, spks: torch.Tensor,
                      cond: torch.Tensor, frames: torch.Tensor, cnn_cache: torch.Tensor,
                      k_cache: torch.Tensor, v_cache: torch.Tensor, cached: torch.Tensor):
        """Streaming velocity. x, mu, cond [B, 80, T] (first frames[b] real); cnn_cache
        [depth, B, 2·hidden, 2]; k/v_cache [depth, B, H, S, head_dim] (first cached[b] real)
        → (velocity [B, 80, T], new cnn cache, new keys, new values [depth, B, H, T, head_dim])."""
        c = self.t_embedder(t)[:, None, :]
        h = torch.cat([x, mu, spks[:, :, None].expand(-1, -1, x.shape[2]), cond], dim=1)
        h = self.in_proj(h.transpose(1, 2))
        cnns, ks, vs = [], [], []
        for i, block in enumerate(self.blocks):
            h, cnn, k, v = block.forward_chunk(h, c, frames, cnn_cache[i], k_cache[i], v_cache[i],
                                               cached)
            cnns.append(cnn)
            ks.append(k)
            vs.append(v)
        out = self.final_layer(h, c).transpose(1, 2)
        return out, torch.stack(cnns), torch.stack(ks), torch.stack(vs)
