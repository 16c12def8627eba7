"""The flow in streaming mode (EditX `flow.setup_cache` / `flow.inference_chunk`), batched.

Each stream keeps its own caches (`FlowStreamState`, unpadded); `flow_chunks` runs one chunk
of B streams at once: their caches are padded into a batch, the new frames run through
`UpsampleConformerEncoderV2.forward_chunk` and a 10-step Euler solve of
`DiT.forward_chunk`, and each stream's new keys/values are appended to its own caches.

What upstream does and we keep (stepvocoder/cosyvoice2/flow/flow.py, flow_matching.py):
- setup = a chunk with empty caches over prompt rows + look-ahead rows, cond = the prompt mel;
  its mel is discarded, its caches kept. Later chunks have cond = 0.
- the start noise of a chunk is the fixed buffer at offset = the DiT cache length (so it
  stops advancing once the cache is truncated).
- the encoder's caches grow without bound; the DiT's (per Euler step and block, separately for
  the conditional and unconditional rows) is cut after every chunk to its newest
  `left_frames` frames + the prompt frames once it is longer than that (keys are stored
  newest first, so that is `[:left] ‖ [-prompt:]`).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F

from ..settings import DECODER
from .flow import CausalMaskedDiffWithXvec, cosine_time_steps
from .flow_dit import DiT
from .flow_encoder import EncoderChunkCache


@dataclasses.dataclass
class FlowStreamState:
    """One stream's flow caches (model dtype/device, no batch axis)."""

    spk: torch.Tensor  # [80] affine(L2-normalised x-vector)
    prompt_frames: int = 0  # set by the setup chunk (its mel frames)
    started: bool = False
    lookahead: torch.Tensor | None = None  # [D, 2]
    up: torch.Tensor | None = None  # [D, 2·stride]
    enc_k: torch.Tensor | None = None  # [blocks, H, rows, d_k]
    enc_v: torch.Tensor | None = None
    up_k: torch.Tensor | None = None  # [up blocks, H, stride·rows, d_k]
    up_v: torch.Tensor | None = None
    # per Euler step: conv history [depth, 2, 2·hidden, 2] and keys/values [depth, 2, H, S, hd]
    # (the conditional and the unconditional rows), keys newest first
    dit_cnn: list[torch.Tensor] = dataclasses.field(default_factory=list)
    dit_k: list[torch.Tensor] = dataclasses.field(default_factory=list)
    dit_v: list[torch.Tensor] = dataclasses.field(default_factory=list)

    @property
    def cached_rows(self) -> int:
        return 0 if self.enc_k is None else self.enc_k.shape[2]

    @property
    def cached_frames(self) -> int:
        """The DiT cache length: also the noise offset of the next chunk."""
        return self.dit_k[0].shape[3] if self.dit_k else 0


@dataclasses.dataclass
class FlowChunk:
    """One stream's work in a batched step: `rows` [n, 2] int64 token rows (the chunk's rows
    and its look-ahead rows; a last chunk has no look-ahead), `cond` [2·out_rows, 80] (setup:
    the prompt mel) or None (zeros)."""

    state: FlowStreamState
    rows: torch.Tensor
    last: bool
    cond: torch.Tensor | None = None


def new_flow_state(flow: CausalMaskedDiffWithXvec, spk_embedding: torch.Tensor) -> FlowStreamState:
    """Empty caches for a stream with this CAM++ embedding [192]."""
    param = next(flow.parameters())
    spk = F.normalize(spk_embedding.to(param.device, param.dtype)[None], dim=1)
    return FlowStreamState(spk=flow.spk_embed_affine_layer(spk)[0])


def _pad_stack(tensors: Sequence[torch.Tensor | None], dim: int, shape: tuple, like: torch.Tensor
               ) -> torch.Tensor:
    """Stack along a new axis 1 (the batch axis of [layers, B, …] caches), zero-padding `dim`
    (of each tensor) to the longest; None counts as empty. shape: a tensor's shape at length 0."""
    size = max([0] + [t.shape[dim] for t in tensors if t is not None])
    out = like.new_zeros((shape[0], len(tensors)) + shape[1:dim] + (size,) + shape[dim + 1:])
    for i, t in enumerate(tensors):
        if t is not None and t.shape[dim]:
            out[:, i].narrow(dim, 0, t.shape[dim]).copy_(t)
    return out


def _encoder_cache(flow: CausalMaskedDiffWithXvec, states: Sequence[FlowStreamState],
                   like: torch.Tensor) -> EncoderChunkCache:
    enc = flow.encoder
    d = enc.cfg.output_size
    heads = enc.cfg.attention_heads
    stride = enc.up_layer.stride

    def conv(name: str, frames: int) -> torch.Tensor:
        out = like.new_zeros(len(states), d, frames)
        for i, s in enumerate(states):
            if getattr(s, name) is not None:
                out[i] = getattr(s, name)
        return out

    blocks = (len(enc.encoders), heads, 0, d // heads)
    up_blocks = (len(enc.up_encoders), heads, 0, d // heads)
    return EncoderChunkCache(
        lookahead=conv("lookahead", 2), up=conv("up", 2 * stride),
        k=_pad_stack([s.enc_k for s in states], 2, blocks, like),
        v=_pad_stack([s.enc_v for s in states], 2, blocks, like),
        up_k=_pad_stack([s.up_k for s in states], 2, up_blocks, like),
        up_v=_pad_stack([s.up_v for s in states], 2, up_blocks, like),
        rows=torch.tensor([s.cached_rows for s in states], device=like.device))


def _append(old: torch.Tensor | None, new: torch.Tensor, dim: int) -> torch.Tensor:
    return new.clone() if old is None else torch.cat([old, new], dim=dim)


def _out_rows(flow: CausalMaskedDiffWithXvec, chunks: Sequence[FlowChunk]) -> list[int]:
    look = flow.encoder.cfg.pre_lookahead_len
    real = [int(c.rows.shape[0]) for c in chunks]
    out_rows = [n if c.last else n - look for n, c in zip(real, chunks)]
    if min(out_rows) < 2:
        raise ValueError(f"flow_chunks: a chunk needs at least two rows past its look-ahead, got "
                         f"{real} rows (last: {[c.last for c in chunks]})")
    return out_rows


def _encode(flow: CausalMaskedDiffWithXvec, chunks: Sequence[FlowChunk], out_rows: list[int],
            like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed + encode + project the chunks' rows → (mu [B, 80, F_max], frames [B])."""
    enc = flow.encoder
    look, stride = enc.cfg.pre_lookahead_len, enc.up_layer.stride
    real = [int(c.rows.shape[0]) for c in chunks]
    width = max(o + look for o in out_rows)
    rows = torch.zeros(len(chunks), width, 2, dtype=torch.long, device=like.device)
    for i, c in enumerate(chunks):
        rows[i, :real[i]] = c.rows.to(like.device)
    emb = flow.input_embedding(rows.clamp(min=0))
    dev = dict(device=like.device)
    h, new = enc.forward_chunk(emb, torch.tensor(real, **dev), torch.tensor(out_rows, **dev),
                               _encoder_cache(flow, [c.state for c in chunks], like))
    for i, c in enumerate(chunks):
        s, r = c.state, out_rows[i]
        s.lookahead, s.up = new.lookahead[i].clone(), new.up[i].clone()
        s.enc_k = _append(s.enc_k, new.k[:, i, :, :r], 2)
        s.enc_v = _append(s.enc_v, new.v[:, i, :, :r], 2)
        s.up_k = _append(s.up_k, new.up_k[:, i, :, :stride * r], 2)
        s.up_v = _append(s.up_v, new.up_v[:, i, :, :stride * r], 2)
    mu = flow.encoder_proj(h).transpose(1, 2).contiguous()
    return mu, torch.tensor(out_rows, **dev) * stride


def _dit_step_cache(est: DiT, states: Sequence[FlowStreamState], step: int,
                    cached: torch.Tensor, like: torch.Tensor):
    """Step `step`'s caches of B streams as [depth, 2B, …]: conditional rows, then
    unconditional rows, as the solver's batch."""
    cfg = est.cfg

    def rows(name: str, shape: tuple) -> torch.Tensor:
        per = [getattr(s, name)[step] if getattr(s, name) else None for s in states]
        cond = _pad_stack([None if t is None else t[:, 0] for t in per], 2, shape, like)
        uncond = _pad_stack([None if t is None else t[:, 1] for t in per], 2, shape, like)
        return torch.cat([cond, uncond], dim=1)

    cnn = rows("dit_cnn", (cfg.depth, 2 * cfg.hidden_size, 2))
    if cnn.shape[3] == 0:  # no stream has run yet: zero conv history
        cnn = like.new_zeros(cfg.depth, 2 * len(states), 2 * cfg.hidden_size, 2)
    kv_shape = (cfg.depth, cfg.num_heads, 0, cfg.head_dim)
    return cnn, rows("dit_k", kv_shape), rows("dit_v", kv_shape), torch.cat([cached, cached])


def _keep_window(x: torch.Tensor, prompt: int, left: int) -> torch.Tensor:
    """Upstream's cut of a [.., S, hd] newest-first DiT cache: newest `left` + the prompt."""
    if x.shape[-2] > prompt + left:
        return torch.cat([x[..., :left, :], x[..., x.shape[-2] - prompt:, :]], dim=-2)
    return x


@torch.inference_mode()
def flow_chunks(flow: CausalMaskedDiffWithXvec, noise: torch.Tensor, chunks: Sequence[FlowChunk],
                n_steps: int = DECODER.flow_steps,
                left_frames: int = DECODER.stream_estimator_left_frames) -> list[torch.Tensor]:
    """One streaming step of B streams (any mix of setups, chunks and last chunks, at any
    positions) → each chunk's mel [80, 2·out_rows]; the states are updated in place. Each
    stream's result equals running it alone up to float rounding (padding changes kernels)."""
    est = flow.decoder.estimator
    if not isinstance(est, DiT):
        raise TypeError("streaming needs the torch DiT estimator (flow_engine 'torch'): the "
                        "exported estimator has no chunk mode")
    param = next(flow.parameters())
    like = param.new_zeros(())
    b = len(chunks)
    states = [c.state for c in chunks]
    if len({id(s) for s in states}) != b:
        raise ValueError("flow_chunks: a stream may appear only once per step")
    out_rows = _out_rows(flow, chunks)
    up = flow.up_rate
    for c, r in zip(chunks, out_rows):
        if noise.shape[2] < c.state.cached_frames + up * r:
            raise ValueError(f"flow_chunks: the noise buffer has {noise.shape[2]} frames, a "
                             f"stream needs {c.state.cached_frames + up * r}")
        if c.cond is not None and tuple(c.cond.shape) != (up * r, flow.cfg.output_size):
            raise ValueError(f"flow_chunks: cond must be [{up * r}, {flow.cfg.output_size}], "
                             f"got {list(c.cond.shape)}")
    mu, frames = _encode(flow, chunks, out_rows, like)
    width = mu.shape[2]
    cond = like.new_zeros(b, flow.cfg.output_size, width)
    x = like.new_zeros(b, flow.cfg.output_size, width)
    for i, c in enumerate(chunks):
        n, offset = int(frames[i]), c.state.cached_frames
        if c.cond is not None:
            cond[i, :, :n] = c.cond.to(like.device, like.dtype).T
        x[i, :, :n] = noise[0, :, offset:offset + n]
    spks = torch.stack([s.spk for s in states])
    mu_in = torch.cat([mu, torch.zeros_like(mu)])
    spks_in = torch.cat([spks, torch.zeros_like(spks)])
    cond_in = torch.cat([cond, torch.zeros_like(cond)])
    frames_in = torch.cat([frames, frames])
    t_span = cosine_time_steps(n_steps, x.dtype, x.device)
    t, dt = t_span[:1], t_span[1] - t_span[0]
    old = [s.cached_frames for s in states]
    cached = torch.tensor(old, device=like.device)
    for i, s in enumerate(states):
        if not s.started:
            s.prompt_frames = int(frames[i])
    new_cnn, new_k, new_v = ([[] for _ in states] for _ in range(3))
    for step in range(1, n_steps + 1):
        cnn, k_cache, v_cache, cached_in = _dit_step_cache(est, states, step - 1, cached, like)
        v, cnn, k, vv = est.forward_chunk(torch.cat([x, x]), mu_in, t.expand(2 * b), spks_in,
                                          cond_in, frames_in, cnn, k_cache, v_cache, cached_in)
        x = x + dt * ((1.0 + flow.cfg.cfg_rate) * v[:b] - flow.cfg.cfg_rate * v[b:])
        t = t + dt
        if step < n_steps:
            dt = t_span[step + 1] - t
        for i, s in enumerate(states):
            n, pair = int(frames[i]), [i, b + i]

            def joined(new: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
                kv = torch.cat([new[:, pair, :, :n], cache[:, pair, :, :old[i]]], dim=3)
                return _keep_window(kv, s.prompt_frames, left_frames).clone()

            new_cnn[i].append(cnn[:, pair].clone())
            new_k[i].append(joined(k, k_cache))
            new_v[i].append(joined(vv, v_cache))
        del k_cache, v_cache
    for i, s in enumerate(states):
        s.started = True
        s.dit_cnn, s.dit_k, s.dit_v = new_cnn[i], new_k[i], new_v[i]
    return [x[i, :, :int(frames[i])].clone() for i in range(b)]
