"""A deliberately plain Step1 oracle for tests and benchmarks.

Written straight from the formulas, sharing no attention, bias or sampling code with
`step1_model.py` / `sampling.py` / `generator.py` (only the weight reader): explicit per-head
repeat of the key/value groups, an explicit bias matrix with slopes from the spec's formula,
and Hugging Face `generate`'s batch-1 loop (a cache grown by `torch.cat`, the logits
processors in HF order: RepetitionAware, temperature, top-k; softmax; multinomial).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from .sampling import SamplingParams
from .step1_config import Step1Config
from .step1_model import Step1Model, read_step1_weights

Weights = tuple  # (Step1Config, {tensor name: tensor})


def reference_weights(source: str | Path | Step1Model, dtype: torch.dtype = torch.float32,
                      device="cpu") -> Weights:
    """(config, tensors) of a checkpoint directory, or of a loaded model (sharing its tensors)."""
    if isinstance(source, Step1Model):
        if source.packed:
            raise ValueError("a packed Step1Model has no dense weights (Step1Model.pack frees "
                             "them); read the reference's weights from the checkpoint")
        return source.config, dict(source.state_dict())
    return read_step1_weights(source, dtype=dtype, device=device)


def spec_slopes(n_heads: int) -> list[float]:
    """§2.3: n = largest power of two <= heads; 2^(-8k/n), k=1..n; then 2^(-4(2k-1)/n)."""
    n = 1
    while n * 2 <= n_heads:
        n *= 2
    first = [math.pow(2.0, -8.0 * k / n) for k in range(1, n + 1)]
    extra = [math.pow(2.0, -4.0 * (2 * k - 1) / n) for k in range(1, n_heads - n + 1)]
    return first + extra


def bias_matrix(n_heads: int, first_query: int, n_queries: int, n_keys: int) -> torch.Tensor:
    """[heads, queries, keys]: -slope * sqrt(i - j) where key j <= query i, else -inf."""
    i = torch.arange(first_query, first_query + n_queries, dtype=torch.float32).view(-1, 1)
    j = torch.arange(n_keys, dtype=torch.float32).view(1, -1)
    distance = i - j
    bias = torch.empty(n_heads, n_queries, n_keys)
    for head, slope in enumerate(spec_slopes(n_heads)):
        bias[head] = torch.where(distance >= 0, -slope * distance.clamp(min=0).sqrt(),
                                 torch.tensor(float("-inf")))
    return bias


def _rms_norm(x, weight, eps):
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return x * torch.rsqrt(variance + eps).to(x.dtype) * weight


def reference_forward(weights: Weights, ids: Sequence[int], past: list | None = None):
    """Logits [len(ids), vocab] (float32) of `ids` following the cached `past` (a list of
    per-layer (keys, values) [groups, length, head_dim]); returns (logits, new past)."""
    config, w = weights
    heads, groups, head_dim = (config.num_attention_heads, config.num_attention_groups,
                               config.head_dim)
    offset = 0 if past is None else past[0][0].shape[1]
    q_len = len(ids)
    embed = w["model.embed_tokens.weight"]
    x = embed[torch.tensor(list(ids), device=embed.device)]
    dtype = x.dtype
    bias = bias_matrix(heads, offset, q_len, offset + q_len).to(device=x.device, dtype=dtype)
    new_past = []
    for n in range(config.num_hidden_layers):
        p = f"model.layers.{n}."
        h = _rms_norm(x, w[p + "input_layernorm.weight"], config.rms_norm_eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(q_len, heads, head_dim).transpose(0, 1)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(q_len, groups, head_dim).transpose(0, 1)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(q_len, groups, head_dim).transpose(0, 1)
        if past is not None:
            k = torch.cat([past[n][0], k], dim=1)
            v = torch.cat([past[n][1], v], dim=1)
        new_past.append((k, v))
        per_head = heads // groups
        k_heads = torch.stack([k[head // per_head] for head in range(heads)])
        v_heads = torch.stack([v[head // per_head] for head in range(heads)])
        scores = q @ k_heads.transpose(1, 2) / math.sqrt(head_dim) + bias
        attn = torch.softmax(scores.float(), dim=-1).to(dtype) @ v_heads  # [heads, q, dim]
        x = x + attn.transpose(0, 1).reshape(q_len, heads * head_dim) @ w[
            p + "self_attn.o_proj.weight"].T
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], config.rms_norm_eps)
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate * torch.sigmoid(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    x = _rms_norm(x, w["model.norm.weight"], config.rms_norm_eps)
    return (x @ w["lm_head.weight"].T).float(), new_past


def _repetition_aware(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """HF logits processor of the original: ban the newest id when it fills > 10 % of the
    last 10 ids (no ban on a shorter sequence)."""
    window = input_ids[:, -10:]
    if window.shape[1] < 10:
        return scores
    last = window[:, -1:]
    ratio = (window == last).sum(dim=1).float() / 10
    mask = ratio > 0.1
    scores[mask, last[mask].squeeze(-1)] = float("-inf")
    return scores


def _top_k(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    top_k = min(top_k, scores.size(-1))
    kth = torch.topk(scores, top_k)[0][..., -1, None]
    return scores.masked_fill(scores < kth, float("-inf"))


def reference_generate(source: str | Path | Step1Model | Weights, prompt_ids: Sequence[int],
                       params: SamplingParams, dtype: torch.dtype = torch.float32) -> list[int]:
    """HF-style batch-1 generation; returns the ids after the prompt, last one dropped as the
    original does (`params.drop_last`)."""
    weights = source if isinstance(source, tuple) else reference_weights(source, dtype)
    config: Step1Config = weights[0]
    device = weights[1]["lm_head.weight"].device
    generator = params.new_generator(device)
    input_ids = torch.tensor([list(prompt_ids)], device=device)
    with torch.inference_mode():
        logits, past = reference_forward(weights, prompt_ids)
        while True:
            scores = _repetition_aware(input_ids, logits[-1:].clone())
            if params.greedy:
                token = scores.argmax(dim=-1)
            else:
                scores = scores / params.temperature
                if params.top_k:
                    scores = _top_k(scores, params.top_k)
                probs = torch.softmax(scores, dim=-1)
                token = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
            input_ids = torch.cat([input_ids, token[:, None]], dim=-1)
            if int(token) == config.eos_token_id or input_ids.shape[1] >= params.max_length:
                break
            logits, past = reference_forward(weights, [int(token)], past)
    out = input_ids[0, len(prompt_ids):].tolist()
    if params.drop_last or out[-1] == config.eos_token_id:
        out = out[:-1]
    return out
