"""Our torch implementation of Step1ForCausalLM (the Step-Audio-EditX LLM) and its loader.

Architecture (step_audio_internals.md §2.3): pre-norm decoder layers of RMSNorm → grouped-query
attention with a sqrt-ALiBi additive bias (no rotary or learned positions) → RMSNorm → SwiGLU
MLP; untied `embed_tokens` / `lm_head`; no biases anywhere. Module names equal the release's
tensor names, so `model-*.safetensors` load as they are.

The forward pass works on a `KVCache` slot pool so that sequences of different lengths decode
together: every row of a batch is one sequence in its own cache slot at its own position, and
the bias masks each row's keys to its own past, so there is no padding to get wrong.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from .step1_config import TIE_FLAG, Step1Config, TiedEmbeddingsError

LOG = logging.getLogger(__name__)
INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_GLOB = "model*.safetensors"
LM_HEAD = "lm_head.weight"


# --------------------------------------------------------------------------- sqrt-ALiBi

def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Per-head slopes, float32 [n_heads]: with n the largest power of two <= n_heads,
    2^(-8k/n) for k = 1..n, then 2^(-4(2k-1)/n) for k = 1..n_heads-n."""
    n = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = [2.0 ** (-8.0 * k / n) for k in range(1, n + 1)]
    slopes += [2.0 ** (-4.0 * (2 * k - 1) / n) for k in range(1, n_heads - n + 1)]
    return torch.tensor(slopes, dtype=torch.float64).to(torch.float32)


def sqrt_alibi_bias(slopes: torch.Tensor, query_positions: torch.Tensor, key_len: int,
                    dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias [batch, heads, queries, key_len]: -slope_h * sqrt(i - j) for a
    key j at or before the query's position i, -inf after it (causal, and it hides the unused
    tail of a row's cache slot). Built in float32, then cast to the activation dtype as the
    original does."""
    keys = torch.arange(key_len, device=query_positions.device)
    distance = (query_positions[:, :, None] - keys).to(torch.float32)  # [b, q, t]
    bias = -slopes.to(distance.device)[None, :, None, None] * distance.clamp(min=0).sqrt()[:, None]
    return bias.masked_fill((distance < 0)[:, None], float("-inf")).to(dtype)


def group_heads(per_head: torch.Tensor, groups: int) -> torch.Tensor:
    """[b, heads, q, n] → [b, groups, heads_per_group * q, n]. Head h reads key/value group
    h // heads_per_group, so folding a group's heads into the query axis lets attention run on
    the cached groups directly, without repeating keys and values per head."""
    b, heads, q, n = per_head.shape
    return per_head.reshape(b, groups, heads // groups * q, n)


# --------------------------------------------------------------------------- KV cache

class KVCache:
    """Keys and values of up to `slots` sequences, [layers, 2, slots, groups, capacity, head_dim].

    A sequence owns one slot and its positions 0..len-1 in it. Capacity grows (doubling) as
    sequences lengthen, so memory follows the longest live sequence, not the length limit.
    """

    def __init__(self, config: Step1Config, slots: int, device, dtype: torch.dtype,
                 initial_capacity: int = 256):
        self.config = config
        self.slots = slots
        self.device = torch.device(device)
        self.dtype = dtype
        self.initial_capacity = initial_capacity
        self.data = self._allocate(0)

    @property
    def capacity(self) -> int:
        return self.data.shape[4]

    def _allocate(self, capacity: int) -> torch.Tensor:
        c = self.config
        return torch.zeros(c.num_hidden_layers, 2, self.slots, c.num_attention_groups, capacity,
                           c.head_dim, device=self.device, dtype=self.dtype)

    def ensure(self, length: int) -> None:
        """Room for positions 0..length-1 in every slot."""
        if length <= self.capacity:
            return
        grown = self._allocate(max(length, 2 * self.capacity, self.initial_capacity))
        grown[:, :, :, :, : self.capacity] = self.data
        self.data = grown

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy a sequence's first `length` positions from slot `src` to slot `dst`."""
        self.data[:, :, dst, :, :length] = self.data[:, :, src, :, :length]

    def clear(self) -> None:
        """Release the memory (no sequence is live)."""
        self.data = self._allocate(0)


# --------------------------------------------------------------------------- modules

class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(variance + self.eps).to(x.dtype) * self.weight


class Step1Attention(nn.Module):
    def __init__(self, config: Step1Config):
        super().__init__()
        self.heads = config.num_attention_heads
        self.groups = config.num_attention_groups
        self.head_dim = config.head_dim
        kv_size = self.groups * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kv_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, layer_kv: torch.Tensor, write_at: tuple,
                key_len: int, bias: torch.Tensor) -> torch.Tensor:
        """x [b, q, hidden]; layer_kv [2, b, groups, capacity, head_dim] (the batch's slots);
        write_at (rows [b, 1], positions [b, q]) where this call's keys/values go; bias
        [b, groups, heads_per_group * q, key_len] (`group_heads`)."""
        b, q, _ = x.shape
        layer_kv[0][write_at[0], :, write_at[1]] = self.k_proj(x).view(
            b, q, self.groups, self.head_dim)
        layer_kv[1][write_at[0], :, write_at[1]] = self.v_proj(x).view(
            b, q, self.groups, self.head_dim)
        keys = layer_kv[0, :, :, :key_len]
        values = layer_kv[1, :, :, :key_len]
        query = group_heads(self.q_proj(x).view(b, q, self.heads, self.head_dim).transpose(1, 2),
                            self.groups)
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=bias)
        return self.o_proj(out.reshape(b, self.heads, q, self.head_dim).transpose(1, 2)
                           .reshape(b, q, -1))


class Step1MLP(nn.Module):
    def __init__(self, config: Step1Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Step1DecoderLayer(nn.Module):
    def __init__(self, config: Step1Config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Step1Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = Step1MLP(config)

    def forward(self, x, layer_kv, write_at, key_len, bias):
        x = x + self.self_attn(self.input_layernorm(x), layer_kv, write_at, key_len, bias)
        return x + self.mlp(self.post_attention_layernorm(x))


class Step1Decoder(nn.Module):
    def __init__(self, config: Step1Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Step1DecoderLayer(config)
                                    for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Step1Model(nn.Module):
    """Step1ForCausalLM: `model` (the decoder) and an untied `lm_head`."""

    def __init__(self, config: Step1Config):
        super().__init__()
        self.config = config
        self.model = Step1Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.register_buffer("slopes", alibi_slopes(config.num_attention_heads), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def new_cache(self, slots: int) -> KVCache:
        return KVCache(self.config, slots, self.device, self.dtype)

    def forward(self, input_ids: torch.Tensor, cache: KVCache, first_slot: int,
                positions: Sequence[int], all_logits: bool = False) -> torch.Tensor:
        """Run `input_ids` [b, q] of the sequences in slots first_slot..first_slot+b-1, whose
        cached lengths are `positions` (b ints: the new ids sit at positions..positions+q-1),
        and extend their caches. Returns float logits [b, vocab] of each row's last id, or
        [b, q, vocab] with `all_logits`."""
        b, q = input_ids.shape
        key_len = max(positions) + q
        query_positions = (torch.tensor(list(positions), device=self.device)[:, None]
                           + torch.arange(q, device=self.device))
        cache.ensure(key_len)
        rows = torch.arange(b, device=self.device)[:, None]
        bias = group_heads(sqrt_alibi_bias(self.slopes, query_positions, key_len, self.dtype),
                           self.config.num_attention_groups)
        kv = cache.data[:, :, first_slot: first_slot + b]
        x = self.model.embed_tokens(input_ids.to(self.device))
        for i, layer in enumerate(self.model.layers):
            x = layer(x, kv[i], (rows, query_positions), key_len, bias)
        x = self.model.norm(x if all_logits else x[:, -1])
        return self.lm_head(x).float()


# --------------------------------------------------------------------------- loading

def expected_tensors(config: Step1Config) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Step1 checkpoint and its shape (291 for the release)."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = config.num_attention_groups * config.head_dim
    shapes = {"model.embed_tokens.weight": (v, h)}
    for n in range(config.num_hidden_layers):
        p = f"model.layers.{n}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
        })
    shapes["model.norm.weight"] = (h,)
    shapes[LM_HEAD] = (v, h)
    return shapes


def weight_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name → file, from model.safetensors.index.json when present, else from the
    headers of every model*.safetensors file."""
    index = model_dir / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: model_dir / file for name, file in weight_map.items()}
    files = sorted(model_dir.glob(WEIGHTS_GLOB))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no {INDEX_FILE} and no {WEIGHTS_GLOB} files")
    located = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            located.update((name, path) for name in f.keys())
    return located


def read_step1_weights(model_dir: str | Path, dtype: torch.dtype = torch.float32,
                       device="cpu") -> tuple[Step1Config, dict[str, torch.Tensor]]:
    """config.json and every tensor, checked by name and shape against the architecture."""
    model_dir = Path(model_dir)
    config = Step1Config.from_dir(model_dir)
    expected = expected_tensors(config)
    located = weight_files(model_dir)
    if LM_HEAD not in located:
        raise TiedEmbeddingsError(
            f"{model_dir}: no '{LM_HEAD}' tensor in the checkpoint, so the model would run with "
            f"tied embeddings ('{TIE_FLAG}'); Step1 (Step-Audio-EditX) needs its untied lm_head")
    unexpected = sorted(set(located) - set(expected))
    if unexpected:
        raise ValueError(f"{located[unexpected[0]]}: unexpected tensor(s) {unexpected[:5]} "
                         "(Step1 has no biases and no other parameters)")
    weights = {}
    by_file: dict[Path, list[str]] = {}
    for name in expected:
        if name not in located:
            raise ValueError(f"{model_dir}: tensor '{name}' is missing from the checkpoint")
        by_file.setdefault(located[name], []).append(name)
    for path, names in by_file.items():
        with safe_open(path, framework="pt") as f:
            for name in names:
                shape = tuple(f.get_slice(name).get_shape())
                if shape != expected[name]:
                    raise ValueError(f"{path}: tensor '{name}' has shape {list(shape)}, "
                                     f"expected {list(expected[name])} from config.json")
                weights[name] = f.get_tensor(name).to(device=device, dtype=dtype)
    return config, weights


def load_step1(model_dir: str | Path, device="cpu", dtype: torch.dtype = torch.float32
               ) -> Step1Model:
    """A ready Step1Model in eval mode on `device` in `dtype`.

    On CUDA this turns off cuDNN's attention for the process: it builds an execution plan per
    shape, and decoding meets a new key length every step (measured on an H100: the first
    pass over new lengths ran 3x slower than the HF-style reference)."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)
    config, weights = read_step1_weights(model_dir, dtype=dtype, device=device)
    with torch.device("meta"):
        model = Step1Model(config)
    model.load_state_dict(weights, strict=True, assign=True)
    model.slopes = alibi_slopes(config.num_attention_heads).to(device)
    LOG.info("loaded Step1 from %s: %d layers, hidden %d, %s on %s", model_dir,
             config.num_hidden_layers, config.hidden_size, dtype, device)
    return model.eval()
