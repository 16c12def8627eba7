"""A plain fp32 reference of the flow for one request, written from the formulas (§3.3).

No batching, no masks, no fused kernels: every layer is spelled out (LayerNorm as mean/variance,
convolutions as sums over taps, relative positions as an explicit i−j table, the guidance as two
separate estimator calls). It reads the weights from a loaded `CausalMaskedDiffWithXvec` by
their checkpoint names. Tests compare the batched `flow.flow_inference` against it.
"""
from __future__ import annotations

import math

import torch

from ..settings import DECODER
from .flow import CausalMaskedDiffWithXvec


class _Weights:
    def __init__(self, state: dict[str, torch.Tensor], prefix: str = ""):
        self.state, self.prefix = state, prefix

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.state[self.prefix + name]

    def get(self, name: str):
        return self.state.get(self.prefix + name)

    def sub(self, name: str) -> "_Weights":
        return _Weights(self.state, f"{self.prefix}{name}.")


def linear(x: torch.Tensor, w: _Weights) -> torch.Tensor:
    y = x @ w["weight"].T
    bias = w.get("bias")
    return y if bias is None else y + bias


def layer_norm(x: torch.Tensor, eps: float, w: _Weights | None = None) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    return y if w is None else y * w["weight"] + w["bias"]


def conv1d(x: torch.Tensor, w: _Weights, left: int, right: int) -> torch.Tensor:
    """x [T, C_in], zero-padded by left/right frames → [T + left + right − K + 1, C_out]."""
    weight = w["weight"]
    k = weight.shape[2]
    xp = torch.cat([x.new_zeros(left, x.shape[1]), x, x.new_zeros(right, x.shape[1])])
    frames = xp.shape[0] - k + 1
    return sum(xp[j:j + frames] @ weight[:, :, j].T for j in range(k)) + w["bias"]


def silu(x):
    return x * torch.sigmoid(x)


def mish(x):
    return x * torch.tanh(torch.log1p(torch.exp(-x.abs())) + x.clamp(min=0))


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax(x):
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """ESPnet relative PE of each position: [..., dim], sin at even, cos at odd indices."""
    out = torch.zeros(*positions.shape, dim)
    for i in range(0, dim, 2):
        angle = positions * math.exp(-math.log(10000.0) * i / dim)
        out[..., i], out[..., i + 1] = torch.sin(angle), torch.cos(angle)
    return out


def rel_attention(x: torch.Tensor, w: _Weights, heads: int) -> torch.Tensor:
    t, d = x.shape
    dk = d // heads
    q, k, v = linear(x, w.sub("linear_q")), linear(x, w.sub("linear_k")), linear(x, w.sub("linear_v"))
    idx = torch.arange(t, dtype=torch.float32)
    p = linear(sinusoid(idx[:, None] - idx[None, :], d), w.sub("linear_pos"))  # [T, T, D]
    outs = []
    for h in range(heads):
        cols = slice(h * dk, (h + 1) * dk)
        content = (q[:, cols] + w["pos_bias_u"][h]) @ k[:, cols].T
        position = ((q[:, cols] + w["pos_bias_v"][h])[:, None, :] * p[:, :, cols]).sum(-1)
        outs.append(softmax((content + position) / math.sqrt(dk)) @ v[:, cols])
    return linear(torch.cat(outs, dim=1), w.sub("linear_out"))


def conformer_layer(x: torch.Tensor, w: _Weights, heads: int) -> torch.Tensor:
    x = x + rel_attention(layer_norm(x, 1e-12, w.sub("norm_mha")), w.sub("self_attn"), heads)
    h = layer_norm(x, 1e-12, w.sub("norm_ff"))
    return x + linear(silu(linear(h, w.sub("feed_forward.w_1"))), w.sub("feed_forward.w_2"))


def encoder(x: torch.Tensor, w: _Weights, heads: int, n_blocks: int, n_up: int,
            lookahead: int, stride: int) -> torch.Tensor:
    """[T, D] embeddings → [stride·T, D]."""
    def embed(y, ww):
        return layer_norm(linear(y, ww.sub("out.0")), 1e-5, ww.sub("out.1")) * math.sqrt(y.shape[1])

    x = embed(x, w.sub("embed"))
    y = conv1d(x, w.sub("pre_lookahead_layer.conv1"), 0, lookahead)
    y = torch.where(y > 0, y, 0.01 * y)
    x = x + conv1d(y, w.sub("pre_lookahead_layer.conv2"), 2, 0)
    for i in range(n_blocks):
        x = conformer_layer(x, w.sub(f"encoders.{i}"), heads)
    x = conv1d(x.repeat_interleave(stride, dim=0), w.sub("up_layer.conv"), 2 * stride, 0)
    x = embed(x, w.sub("up_embed"))
    for i in range(n_up):
        x = conformer_layer(x, w.sub(f"up_encoders.{i}"), heads)
    return layer_norm(x, 1e-5, w.sub("after_norm"))


def dit(x, mu, t: float, spk, cond, w: _Weights, depth: int, heads: int, head_dim: int):
    """One request: x, mu, cond [T, 80], spk [80] → velocity [T, 80]."""
    half = 128
    freqs = torch.tensor([math.exp(-math.log(10000.0) * i / half) for i in range(half)],
                         dtype=torch.float32)
    args = torch.tensor(t, dtype=torch.float32) * 1000.0 * freqs
    c = linear(silu(linear(torch.cat([torch.cos(args), torch.sin(args)]), w.sub("t_embedder.mlp.0"))),
               w.sub("t_embedder.mlp.2"))
    h = linear(torch.cat([x, mu, spk.expand(x.shape[0], -1), cond], dim=1), w.sub("in_proj"))
    for i in range(depth):
        b = w.sub(f"blocks.{i}")
        mods = linear(silu(c), b.sub("adaLN_modulation.1")).chunk(9)
        h = h + mods[2] * _dit_attention(layer_norm(h, 1e-6) * (1 + mods[1]) + mods[0],
                                         b.sub("attn"), heads, head_dim)
        y = layer_norm(h, 1e-6) * (1 + mods[7]) + mods[6]
        y = mish(layer_norm(conv1d(y, b.sub("conv.block.1"), 2, 0), 1e-5, b.sub("conv.block.3")))
        h = h + mods[8] * conv1d(y, b.sub("conv.block.6"), 2, 0)
        y = layer_norm(h, 1e-6) * (1 + mods[4]) + mods[3]
        h = h + mods[5] * linear(gelu_tanh(linear(y, b.sub("mlp.fc1"))), b.sub("mlp.fc2"))
    shift, scale = linear(silu(c), w.sub("final_layer.adaLN_modulation.1")).chunk(2)
    return linear(layer_norm(h, 1e-6) * (1 + scale) + shift, w.sub("final_layer.linear"))


def _dit_attention(x, w: _Weights, heads: int, head_dim: int):
    q, k, v = linear(x, w.sub("to_q")), linear(x, w.sub("to_k")), linear(x, w.sub("to_v"))
    outs = []
    for h in range(heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        qh = layer_norm(q[:, cols], 1e-5, w.sub("q_norm"))
        kh = layer_norm(k[:, cols], 1e-5, w.sub("k_norm"))
        outs.append(softmax(qh @ kh.T / math.sqrt(head_dim)) @ v[:, cols])
    return linear(torch.cat(outs, dim=1), w.sub("proj"))


@torch.no_grad()
def reference_flow(flow: CausalMaskedDiffWithXvec, token_rows: torch.Tensor,
                   prompt_rows: torch.Tensor, prompt_mel: torch.Tensor, spk_embedding: torch.Tensor,
                   noise: torch.Tensor, n_steps: int = DECODER.flow_steps) -> torch.Tensor:
    """One request: token_rows [R, 2], prompt_rows [P, 2], prompt_mel [2P, 80], spk [192],
    noise [1, 80, N] → mel [80, 2R]."""
    cfg = flow.cfg
    w = _Weights({k: v.detach().float().cpu() for k, v in flow.state_dict().items()})
    enc, est = cfg.encoder, cfg.estimator
    rows = torch.cat([prompt_rows, token_rows]).long()
    table = w["input_embedding.embedding.weight"]
    x = torch.cat([table[rows[:, 0]], table[rows[:, 1]]], dim=1)
    h = encoder(x, w.sub("encoder"), enc.attention_heads, enc.num_blocks, enc.num_up_blocks,
                enc.pre_lookahead_len, enc.up_stride)
    mu = linear(h, w.sub("encoder_proj"))
    frames, prompt_frames = mu.shape[0], prompt_mel.shape[0]
    cond = torch.cat([prompt_mel.float(), torch.zeros(frames - prompt_frames, mu.shape[1])])
    spk = spk_embedding.float() / spk_embedding.float().norm().clamp(min=1e-12)
    spk = linear(spk, w.sub("spk_embed_affine_layer"))

    est_w = w.sub("decoder.estimator")
    zeros = torch.zeros_like(mu)

    def velocity(x_t, t, mu_, spk_, cond_):
        return dit(x_t, mu_, t, spk_, cond_, est_w, est.depth, est.num_heads, est.head_dim)

    steps = [1 - math.cos(math.pi / 2 * k / n_steps) for k in range(n_steps + 1)]
    x_t = noise[0, :, :frames].float().T
    for k in range(n_steps):
        v_cond = velocity(x_t, steps[k], mu, spk, cond)
        v_uncond = velocity(x_t, steps[k], zeros, torch.zeros_like(spk), zeros)
        guided = (1 + cfg.cfg_rate) * v_cond - cfg.cfg_rate * v_uncond
        x_t = x_t + (steps[k + 1] - steps[k]) * guided
    return x_t[prompt_frames:].T
