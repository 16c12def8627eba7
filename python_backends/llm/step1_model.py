"""Our torch implementation of Step1ForCausalLM (the Step-Audio-EditX LLM) and its loader.

Architecture (step_audio_internals.md §2.3): pre-norm decoder layers of RMSNorm → grouped-query
attention with a sqrt-ALiBi additive bias (no rotary or learned positions) → RMSNorm → SwiGLU
MLP; untied `embed_tokens` / `lm_head`; no biases anywhere. Module names equal the release's
tensor names, so `model-*.safetensors` load as they are.

The forward pass works on a `KVCache` slot pool so that sequences of different lengths run
together: one forward takes a flat run of T tokens laid out by a `StepPlan`, first one id for
each sequence of the decode batch (slots 0..n-1, each at its own position, attended together),
then prefill chunks of other sequences (each attended alone). Every Linear layer sees all T
tokens at once, so the weights are read once per forward whatever the mix. The bias masks
each row's keys to its own past, so there is no padding to get wrong.

On a CPU with bf16 oneDNN kernels, `Step1Model.pack` prepacks every Linear layer
(`PackedLinear`; q/k/v and gate/up each as one product), bit-identical to `F.linear`, and can
pad inputs of 1-3 rows to oneDNN's faster 4-row kernel.
"""
from __future__ import annotations

import dataclasses
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
    sequences lengthen, so memory follows the longest live sequence, not the length limit. With
    `fixed_capacity` the buffer is allocated once at that size and never moves (what a captured
    CUDA graph needs): `clear()` keeps it and a longer sequence is refused.
    """

    def __init__(self, config: Step1Config, slots: int, device, dtype: torch.dtype,
                 initial_capacity: int = 256, fixed_capacity: int | None = None):
        self.config = config
        self.slots = slots
        self.device = torch.device(device)
        self.dtype = dtype
        self.initial_capacity = initial_capacity
        self.fixed_capacity = fixed_capacity
        self.data = self._allocate(fixed_capacity or 0)

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
        if self.fixed_capacity is not None:
            raise ValueError(f"a sequence of {length} ids does not fit the fixed KV cache of "
                             f"{self.fixed_capacity} positions")
        grown = self._allocate(max(length, 2 * self.capacity, self.initial_capacity))
        grown[:, :, :, :, : self.capacity] = self.data
        self.data = grown

    def permute(self, moves: Sequence[tuple[int, int]], length: int) -> None:
        """Move several sequences at once, (src, dst) each, their first `length` positions: the
        sources are read before any destination is written, so slots may trade places."""
        if not moves or length <= 0:
            return
        src = torch.tensor([m[0] for m in moves], device=self.device)
        dst = torch.tensor([m[1] for m in moves], device=self.device)
        self.data[:, :, dst, :, :length] = self.data[:, :, src, :, :length]

    def clear(self) -> None:
        """Release the memory (no sequence is live); a fixed cache keeps its buffer."""
        if self.fixed_capacity is None:
            self.data = self._allocate(0)


# --------------------------------------------------------------------------- prepacked weights

def can_pack(device, dtype: torch.dtype) -> bool:
    """Whether `PackedLinear` runs for weights of `dtype` on `device`: bfloat16 on a CPU whose
    oneDNN has bf16 kernels. (float32 keeps MKL's `F.linear`: oneDNN's fp32 kernels round
    differently, and the float32 ids are pinned to today's; CUDA has its own kernels.)"""
    return (torch.device(device).type == "cpu" and dtype == torch.bfloat16
            and torch.backends.mkldnn.is_available()
            and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


class PackedLinear(nn.Module):
    """y = x Wᵀ with W reordered once, at load, into oneDNN's blocked layout.

    `F.linear` on bf16 runs the same oneDNN kernel but reorders the plain weight for every call,
    which at decode (one or a few rows) costs as much memory traffic as the product itself.
    Results are bit-identical to `F.linear` (tests/test_llm_packed.py). Several Linear layers
    with the same input can be packed as one (rows concatenated): their outputs are column
    slices of one product, also bit-identical. The weight is no parameter: a packed model has
    no state_dict entry for it (it is loaded, packed and never saved).

    `min_rows`: inputs of fewer rows are padded with zero rows up to it. oneDNN picks its kernel
    by the row count, and its 1- and 2-row bf16 products stream the weights at ~30 and ~25 GB/s
    where the 4-row one streams at ~40 GB/s (perf/RESULTS.md), so a decode step of 1-3
    sequences runs faster padded to 4. The padded rows cost no extra weight traffic; each real
    row's output is the 4-row kernel's, bit-identical to `F.linear` of the padded input, but
    not to `F.linear` of the row alone (another summation order: bf16 rounding differs)."""

    def __init__(self, weights: Sequence[torch.Tensor], min_rows: int = 0):
        super().__init__()
        self.min_rows = min_rows
        dense = weights[0] if len(weights) == 1 else torch.cat(list(weights))
        self.in_features = dense.shape[1]
        self.splits = [w.shape[0] for w in weights]
        self.weight_bytes = dense.numel() * dense.element_size()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if rows < self.min_rows:
            padded = F.pad(x, (0, 0, 0, self.min_rows - rows))
            return torch.ops.mkldnn._linear_pointwise(padded, self.packed, None, "none", [], "")[:rows]
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.splits}, oneDNN-packed, "
                f"min_rows={self.min_rows}")


# --------------------------------------------------------------------------- one forward's layout

@dataclasses.dataclass
class StepPlan:
    """Where the T tokens of one forward come from and go, built once and read by every layer.

    Tokens 0..decode_rows-1 are one id each of the sequences in slots 0..decode_rows-1 (the
    decode batch, attended together over keys 0..decode_key_len-1 under `decode_bias`); then
    come the segments, each a run of ids of one sequence (a prefill chunk), attended alone.
    `slot_index` / `position_index` [T] say where each token's keys and values are written.
    `logits_rows`: the tokens whose logits are returned (None: all)."""

    decode_rows: int
    decode_key_len: int
    decode_bias: torch.Tensor | None  # [decode_rows, groups, heads_per_group, decode_key_len]
    segments: list  # (slot, token offset, length, key_len, bias [1, groups, hpg*length, key_len])
    slot_index: torch.Tensor
    position_index: torch.Tensor
    logits_rows: torch.Tensor | None

    @property
    def key_len(self) -> int:
        return max([self.decode_key_len] + [s[3] for s in self.segments])


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
        self.qkv: PackedLinear | None = None  # q, k and v packed as one (after `pack`)

    def pack(self, min_rows: int = 0) -> None:
        self.qkv = PackedLinear([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight],
                                min_rows)
        del self.q_proj, self.k_proj, self.v_proj
        self.o_proj = PackedLinear([self.o_proj.weight], min_rows)

    def project(self, x: torch.Tensor):
        if self.qkv is not None:
            return self.qkv(x).split(self.qkv.splits, dim=-1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(self, x: torch.Tensor, layer_kv: torch.Tensor, plan: StepPlan) -> torch.Tensor:
        """x [T, hidden]; layer_kv [2, slots, groups, capacity, head_dim] (this layer's cache)."""
        t = x.shape[0]
        q, k, v = self.project(x)
        layer_kv[0][plan.slot_index, :, plan.position_index] = k.view(t, self.groups, self.head_dim)
        layer_kv[1][plan.slot_index, :, plan.position_index] = v.view(t, self.groups, self.head_dim)
        q = q.view(t, self.heads, self.head_dim)
        parts = []
        n = plan.decode_rows
        if n:
            # [n, heads, 1, dim] with each group's heads on the query axis (`group_heads`)
            query = q[:n].reshape(n, self.groups, self.heads // self.groups, self.head_dim)
            out = F.scaled_dot_product_attention(
                query, layer_kv[0, :n, :, : plan.decode_key_len],
                layer_kv[1, :n, :, : plan.decode_key_len], attn_mask=plan.decode_bias)
            parts.append(out.reshape(n, -1))
        for slot, offset, length, key_len, bias in plan.segments:
            query = group_heads(q[offset: offset + length].transpose(0, 1)[None], self.groups)
            out = F.scaled_dot_product_attention(
                query, layer_kv[0, slot: slot + 1, :, :key_len],
                layer_kv[1, slot: slot + 1, :, :key_len], attn_mask=bias)
            parts.append(out.reshape(self.heads, length, self.head_dim).transpose(0, 1)
                         .reshape(length, -1))
        return self.o_proj(parts[0] if len(parts) == 1 else torch.cat(parts))


class Step1MLP(nn.Module):
    def __init__(self, config: Step1Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.gate_up: PackedLinear | None = None  # gate and up packed as one (after `pack`)

    def pack(self, min_rows: int = 0) -> None:
        self.gate_up = PackedLinear([self.gate_proj.weight, self.up_proj.weight], min_rows)
        del self.gate_proj, self.up_proj
        self.down_proj = PackedLinear([self.down_proj.weight], min_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None:
            gate, up = self.gate_up(x).split(self.gate_up.splits, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Step1DecoderLayer(nn.Module):
    def __init__(self, config: Step1Config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Step1Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = Step1MLP(config)

    def forward(self, x, layer_kv, plan):
        x = x + self.self_attn(self.input_layernorm(x), layer_kv, plan)
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
        self.packed = False

    @property
    def device(self) -> torch.device:
        return self.model.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.norm.weight.dtype

    def new_cache(self, slots: int, fixed_capacity: int | None = None) -> KVCache:
        return KVCache(self.config, slots, self.device, self.dtype, fixed_capacity=fixed_capacity)

    def pack(self, min_rows: int = 0) -> "Step1Model":
        """Prepack every Linear layer for oneDNN (q/k/v as one, gate/up as one), in place and
        one layer at a time, so memory never holds a second copy of the model. Irreversible:
        the dense weights are gone (a reference needs its own copy, read from the files).
        `min_rows`: see `PackedLinear` (0: bit-identical to the unpacked model)."""
        if self.packed:
            return self
        if not can_pack(self.device, self.dtype):
            raise ValueError(f"no packed kernels for {self.dtype} on {self.device}")
        for layer in self.model.layers:
            layer.self_attn.pack(min_rows)
            layer.mlp.pack(min_rows)
        self.lm_head = PackedLinear([self.lm_head.weight], min_rows)
        self.packed = True
        return self

    def weight_bytes_per_step(self) -> int:
        """Bytes of weights one decode step reads: every Linear layer (lm_head included) and the
        norms; the embedding contributes only its looked-up rows."""
        total = 0
        for module in self.modules():
            if isinstance(module, PackedLinear):
                total += module.weight_bytes
            elif isinstance(module, (nn.Linear, RMSNorm)):
                total += module.weight.nbytes
        return total

    # ---------------------------------------------------------------- plans

    def attention_bias(self, query_positions: torch.Tensor, key_len: int) -> torch.Tensor:
        """`group_heads` of the sqrt-ALiBi bias of queries [b, q] over keys 0..key_len-1."""
        return group_heads(sqrt_alibi_bias(self.slopes, query_positions, key_len, self.dtype),
                           self.config.num_attention_groups)

    def plan(self, cache: KVCache, decode_positions: Sequence[int],
             segments: Sequence[tuple[int, int, int]] = (),
             logits_rows: Sequence[int] | None = None) -> StepPlan:
        """The plan of one forward: the decode batch (the sequences in slots 0..n-1, cached
        lengths `decode_positions`), then `segments` (slot, start position, length) of ids to
        append. Grows the cache for the longest key range."""
        device = self.device
        n = len(decode_positions)
        slots = list(range(n))
        positions = [int(p) for p in decode_positions]
        decode_key_len = max(positions) + 1 if n else 0
        decode_bias = None
        if n:
            decode_bias = self.attention_bias(torch.tensor(positions, device=device)[:, None],
                                              decode_key_len)
        planned, offset = [], n
        for slot, start, length in segments:
            key_len = start + length
            query = torch.arange(start, key_len, device=device)[None]
            planned.append((slot, offset, length, key_len, self.attention_bias(query, key_len)))
            slots += [slot] * length
            positions += range(start, key_len)
            offset += length
        index = dict(dtype=torch.long, device=device)
        plan = StepPlan(n, decode_key_len, decode_bias, planned, torch.tensor(slots, **index),
                        torch.tensor(positions, **index),
                        None if logits_rows is None else torch.tensor(list(logits_rows), **index))
        cache.ensure(plan.key_len)
        return plan

    def run(self, ids: torch.Tensor, cache: KVCache, plan: StepPlan) -> torch.Tensor:
        """Float logits [rows, vocab] of `plan.logits_rows` of ids [T] (all rows when None),
        the caches extended by every token."""
        x = self.model.embed_tokens(ids.to(self.device))
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cache.data[i], plan)
        if plan.logits_rows is not None:
            if not len(plan.logits_rows):  # a prefill chunk that completes no prompt
                return torch.empty(0, self.config.vocab_size, device=self.device)
            x = x[plan.logits_rows]
        return self.lm_head(self.model.norm(x)).float()

    def forward(self, input_ids: torch.Tensor, cache: KVCache, first_slot: int,
                positions: Sequence[int], all_logits: bool = False) -> torch.Tensor:
        """Run `input_ids` [b, q] of the sequences in slots first_slot..first_slot+b-1, whose
        cached lengths are `positions` (b ints: the new ids sit at positions..positions+q-1),
        and extend their caches. Returns float logits [b, vocab] of each row's last id, or
        [b, q, vocab] with `all_logits`."""
        b, q = input_ids.shape
        if q == 1 and first_slot == 0:
            plan = self.plan(cache, positions, logits_rows=None)
        else:
            rows = None if all_logits else [r * q + q - 1 for r in range(b)]
            plan = self.plan(cache, [], [(first_slot + r, int(positions[r]), q) for r in range(b)],
                             logits_rows=rows)
        logits = self.run(input_ids.reshape(-1), cache, plan)
        return logits.view(b, q, -1) if all_logits else logits


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


def load_step1(model_dir: str | Path, device="cpu", dtype: torch.dtype = torch.float32,
               pack: bool = False, pad_rows: int = 0) -> Step1Model:
    """A ready Step1Model in eval mode on `device` in `dtype`; with `pack` (and where
    `can_pack`), its Linear layers prepacked for oneDNN (`Step1Model.pack`), their inputs
    padded to at least `pad_rows` rows (`PackedLinear.min_rows`).

    On CUDA this turns off cuDNN's attention for the process: it builds an execution plan per
    shape, and decoding meets a new key length every step (measured on an H100: the first
    pass over new lengths ran 3x slower than the HF-style reference). TF32 stays off (torch's
    default for matmuls), so float32 ids are float32's."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)
        torch.backends.cuda.matmul.allow_tf32 = False
    config, weights = read_step1_weights(model_dir, dtype=dtype, device=device)
    with torch.device("meta"):
        model = Step1Model(config)
    model.load_state_dict(weights, strict=True, assign=True)
    del weights  # the model holds the only reference now: packing frees each dense weight
    model.slopes = alibi_slopes(config.num_attention_heads).to(device)
    if pack and can_pack(device, dtype):
        model.pack(pad_rows)
    LOG.info("loaded Step1 from %s: %d layers, hidden %d, %s on %s%s", model_dir,
             config.num_hidden_layers, config.hidden_size, dtype, device,
             f", oneDNN-packed (rows padded to {pad_rows})" if model.packed else "")
    return model.eval()
