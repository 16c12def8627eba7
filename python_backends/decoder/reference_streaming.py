"""A plain one-stream reference of EditX's streaming token2wav, for the tests.

It follows upstream's control flow call by call (`CosyVoice_stream_impl_.token2wav_stream`:
a token buffer, setup once the look-ahead ids are in, one chunk per call when chunk + look-ahead
ids are buffered, everything left on `last_chunk`) and spells the layers out as reference.py
does: no batch, no padding, caches as plain [frames, channels] matrices (keys/values with all
heads side by side), relative positions as an explicit table of query − key distances, the
guidance as two estimator calls with their own caches. Only HiFT reuses the model's modules
(as reference.reference_hift does), with torch.stft / torch.istft.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..settings import DECODER
from .reference import (_Weights, conv1d, gelu_tanh, layer_norm, linear, mish, silu, sinusoid,
                        softmax)
from .token_reshape import reshape_mixed_codes, reshape_token_ids


def _attention(q, k, v, heads: int, extra=None):
    """Per-head softmax(q·k/√d + extra_h) v over [T, H·d] matrices; extra: per-head scores."""
    d = q.shape[1] // heads
    outs = []
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        scores = q[:, cols] @ k[:, cols].T
        if extra is not None:
            scores = scores + extra(h, cols)
        outs.append(softmax(scores / math.sqrt(d)) @ v[:, cols])
    return torch.cat(outs, dim=1)


def rel_attention_cached(x, w: _Weights, heads: int, cache):
    """Conformer rel-pos attention of new frames x [q, D] after `cache` (keys, values [C, D])."""
    k_new, v_new = linear(x, w.sub("linear_k")), linear(x, w.sub("linear_v"))
    k = k_new if cache is None else torch.cat([cache[0], k_new])
    v = v_new if cache is None else torch.cat([cache[1], v_new])
    q = linear(x, w.sub("linear_q"))
    first = k.shape[0] - x.shape[0]
    q_pos = torch.arange(first, k.shape[0], dtype=torch.float32)
    k_pos = torch.arange(k.shape[0], dtype=torch.float32)
    p = linear(sinusoid(q_pos[:, None] - k_pos[None, :], x.shape[1]), w.sub("linear_pos"))
    u, vb = w["pos_bias_u"].flatten(), w["pos_bias_v"].flatten()
    out = _attention(q + u, k, v, heads,
                     lambda h, cols: ((q[:, cols] + vb[cols])[:, None, :] * p[:, :, cols]).sum(-1))
    return linear(out, w.sub("linear_out")), (k, v)


def conformer_cached(x, w: _Weights, heads: int, cache):
    att, new = rel_attention_cached(layer_norm(x, 1e-12, w.sub("norm_mha")), w.sub("self_attn"),
                                    heads, cache)
    x = x + att
    h = layer_norm(x, 1e-12, w.sub("norm_ff"))
    return x + linear(silu(linear(h, w.sub("feed_forward.w_1"))), w.sub("feed_forward.w_2")), new


def _embed(y, w: _Weights):
    return layer_norm(linear(y, w.sub("out.0")), 1e-5, w.sub("out.1")) * math.sqrt(y.shape[1])


def encoder_chunk(x, w: _Weights, cfg, cache: dict | None, last: bool):
    """Upstream `forward_chunk`: embedded rows [n, D] (chunk + look-ahead) → ([2q, D], cache)."""
    look, stride = cfg.pre_lookahead_len, cfg.up_stride
    x = _embed(x, w.sub("embed"))
    if last:
        x = torch.cat([x, x.new_zeros(look, x.shape[1])])
    y = conv1d(x, w.sub("pre_lookahead_layer.conv1"), 0, 0)
    y = torch.where(y > 0, y, 0.01 * y)
    history = x.new_zeros(2, x.shape[1]) if cache is None else cache["lookahead"]
    new = {"lookahead": y[-2:]}
    x = x[:-look] + conv1d(torch.cat([history, y]), w.sub("pre_lookahead_layer.conv2"), 0, 0)
    for i in range(cfg.num_blocks):
        x, new[f"enc{i}"] = conformer_cached(x, w.sub(f"encoders.{i}"), cfg.attention_heads,
                                             None if cache is None else cache[f"enc{i}"])
    up = x.repeat_interleave(stride, dim=0)
    history = x.new_zeros(2 * stride, x.shape[1]) if cache is None else cache["up"]
    up = torch.cat([history, up])
    new["up"] = up[-2 * stride:]
    x = _embed(conv1d(up, w.sub("up_layer.conv"), 0, 0), w.sub("up_embed"))
    for i in range(cfg.num_up_blocks):
        x, new[f"up{i}"] = conformer_cached(x, w.sub(f"up_encoders.{i}"), cfg.attention_heads,
                                            None if cache is None else cache[f"up{i}"])
    return layer_norm(x, 1e-5, w.sub("after_norm")), new


def _causal_conv(x, w: _Weights, history):
    h = torch.cat([x.new_zeros(2, x.shape[1]) if history is None else history, x])
    return conv1d(h, w, 0, 0), h[-2:]


def dit_cached(x, mu, t: float, spk, cond, w: _Weights, cfg, cache: list | None):
    """One estimator call on new frames [T, 80] after `cache` (per block: keys, values [S, H·d]
    newest first, conv histories) → (velocity [T, 80], new cache)."""
    half = 128
    freqs = torch.tensor([math.exp(-math.log(10000.0) * i / half) for i in range(half)])
    args = torch.tensor(t, dtype=torch.float32) * 1000.0 * freqs
    c = linear(silu(linear(torch.cat([torch.cos(args), torch.sin(args)]),
                           w.sub("t_embedder.mlp.0"))), w.sub("t_embedder.mlp.2"))
    h = linear(torch.cat([x, mu, spk.expand(x.shape[0], -1), cond], dim=1), w.sub("in_proj"))
    new = []
    for i in range(cfg.depth):
        b, old = w.sub(f"blocks.{i}"), None if cache is None else cache[i]
        mods = linear(silu(c), b.sub("adaLN_modulation.1")).chunk(9)
        y = layer_norm(h, 1e-6) * (1 + mods[1]) + mods[0]
        a = b.sub("attn")
        q, k, v = linear(y, a.sub("to_q")), linear(y, a.sub("to_k")), linear(y, a.sub("to_v"))
        d = cfg.head_dim
        q, k = (torch.cat([layer_norm(m[:, j * d:(j + 1) * d], 1e-5, a.sub(n))
                           for j in range(cfg.num_heads)], dim=1)
                for m, n in ((q, "q_norm"), (k, "k_norm")))
        if old is not None:  # upstream puts the new frames first
            k, v = torch.cat([k, old["k"]]), torch.cat([v, old["v"]])
        h = h + mods[2] * linear(_attention(q, k, v, cfg.num_heads), a.sub("proj"))
        y = layer_norm(h, 1e-6) * (1 + mods[7]) + mods[6]
        y, conv1 = _causal_conv(y, b.sub("conv.block.1"), None if old is None else old["conv1"])
        y = mish(layer_norm(y, 1e-5, b.sub("conv.block.3")))
        y, conv2 = _causal_conv(y, b.sub("conv.block.6"), None if old is None else old["conv2"])
        h = h + mods[8] * y
        y = layer_norm(h, 1e-6) * (1 + mods[4]) + mods[3]
        h = h + mods[5] * linear(gelu_tanh(linear(y, b.sub("mlp.fc1"))), b.sub("mlp.fc2"))
        new.append({"k": k, "v": v, "conv1": conv1, "conv2": conv2})
    shift, scale = linear(silu(c), w.sub("final_layer.adaLN_modulation.1")).chunk(2)
    return linear(layer_norm(h, 1e-6) * (1 + scale) + shift, w.sub("final_layer.linear")), new


class ReferenceStream:
    """One session of upstream's `CosyVoice_stream_impl_` (HiFT vocoder), fp32 on the CPU.
    `chunks` records, per call that made audio: the flow's mel, HiFT's raw speech (before the
    cross-fade) and the returned audio."""

    def __init__(self, flow, noise, hift, prompt_ids, prompt_mel: np.ndarray,
                 speaker_embedding: np.ndarray, seed: int,
                 chunk_rows=DECODER.stream_chunk_rows,
                 mel_cache_frames: int = DECODER.stream_mel_cache_frames,
                 left_frames: int = DECODER.stream_estimator_left_frames,
                 n_steps: int = DECODER.flow_steps):
        self.cfg = flow.cfg
        self.w = _Weights({k: v.detach().float().cpu() for k, v in flow.state_dict().items()})
        self.noise = noise.float().cpu()
        self.hift = hift
        self.n_steps, self.left = n_steps, left_frames
        self.look = flow.cfg.encoder.pre_lookahead_len
        self.mel_cache_len = mel_cache_frames
        self.source_cache_len = mel_cache_frames * 480
        window = torch.from_numpy(np.hamming(2 * self.source_cache_len)).float()
        self.window = window
        self.chunk_sizes = list(chunk_rows)
        self.tokens: list[int] = []
        self.prompt_rows = torch.from_numpy(reshape_token_ids(prompt_ids))
        mel = torch.from_numpy(np.ascontiguousarray(prompt_mel, np.float32)).T[None]
        self.prompt_mel = F.interpolate(mel, size=2 * len(self.prompt_rows), mode="nearest")[0].T
        spk = torch.from_numpy(np.asarray(speaker_embedding, np.float32))
        self.spk = linear(spk / spk.norm().clamp(min=1e-12), self.w.sub("spk_embed_affine_layer"))
        self.generator = torch.Generator().manual_seed(int(seed))
        self.cache = None  # flow caches; None until set up
        self.hift_mel = torch.zeros(80, 0)
        self.hift_source = torch.zeros(0)
        self.hift_speech = torch.zeros(0)
        self.chunks: list[dict] = []

    @staticmethod
    def _mixed_len(rows: int) -> int:
        return (rows // 3) * 5

    def _flow(self, rows, cond, last: bool):
        """`setup_cache` (cache None) or `inference_chunk` → mel [80, 2q]."""
        table = self.w["input_embedding.embedding.weight"]
        rows = rows.clamp(min=0)
        x = torch.cat([table[rows[:, 0]], table[rows[:, 1]]], dim=1)
        enc_cache = None if self.cache is None else self.cache["encoder"]
        h, enc_cache = encoder_chunk(x, self.w.sub("encoder"), self.cfg.encoder, enc_cache, last)
        mu = linear(h, self.w.sub("encoder_proj"))
        if cond is None:
            cond = torch.zeros_like(mu)
        steps_cache = None if self.cache is None else self.cache["estimator"]
        offset = 0 if steps_cache is None else steps_cache[0][0][0]["k"].shape[0]
        x_t = self.noise[0, :, offset:offset + mu.shape[0]].T
        est = self.w.sub("decoder.estimator")
        zeros = torch.zeros_like(mu)
        t_span = [1 - math.cos(math.pi / 2 * k / self.n_steps) for k in range(self.n_steps + 1)]
        new_steps = []
        for k in range(self.n_steps):
            old = (None, None) if steps_cache is None else steps_cache[k]
            v_cond, c_cache = dit_cached(x_t, mu, t_span[k], self.spk, cond, est,
                                         self.cfg.estimator, old[0])
            v_uncond, u_cache = dit_cached(x_t, zeros, t_span[k], torch.zeros_like(self.spk),
                                           zeros, est, self.cfg.estimator, old[1])
            x_t = x_t + (t_span[k + 1] - t_span[k]) * ((1 + self.cfg.cfg_rate) * v_cond
                                                       - self.cfg.cfg_rate * v_uncond)
            new_steps.append((c_cache, u_cache))
        self.cache = {"encoder": enc_cache, "estimator": new_steps}
        return x_t.T

    def _truncate(self):
        """Upstream: keep the newest 96 + the prompt's frames of the estimator's keys/values."""
        for pair in self.cache["estimator"]:
            for blocks in pair:
                for block in blocks:
                    for name in ("k", "v"):
                        kv = block[name]
                        if kv.shape[0] > self.prompt_frames + self.left:
                            block[name] = torch.cat([kv[:self.left], kv[-self.prompt_frames:]])

    def _hift(self, mel, last: bool):
        mel = torch.cat([self.hift_mel, mel], dim=1)
        hift = self.hift
        with torch.no_grad():
            f0 = hift.f0_predictor(mel[None]).float()
            phases, noise = hift.m_source.draw(self.generator, mel.shape[1])
            source = hift.m_source(f0, phases, noise)
            torch.randn(1, source.shape[1], 1, generator=self.generator)  # randn_like(uv), unused
            if self.hift_source.shape[0]:
                source[0, :self.hift_source.shape[0]] = self.hift_source
            spec = torch.stft(source, hift.n_fft, hift.hop, hift.n_fft, window=hift.window,
                              return_complex=True)
            spectrum = hift.spectrum(hift.decode_frames(mel[None], torch.cat([spec.real,
                                                                              spec.imag], dim=1)))
            speech = torch.istft(spectrum, hift.n_fft, hift.hop, hift.n_fft, window=hift.window)
            speech = torch.clamp(speech, -hift.audio_limit, hift.audio_limit)[0]
        raw = speech.clone()
        n = self.source_cache_len
        if self.hift_speech.shape[0]:
            speech[:n] = speech[:n] * self.window[:n] + self.hift_speech[-n:] * self.window[n:]
        self.hift_mel = mel[:, -self.mel_cache_len:]
        self.hift_source = source[0, -n:]
        self.hift_speech = speech[-n:]
        out = speech if last else speech[:-n]
        self.chunks.append({"raw": raw, "audio": out.clone()})
        return out

    def token2wav_stream(self, codes: list[int], last_chunk: bool):
        """Upstream's per-call logic on mixed codes (ids − 65536) → audio or None."""
        self.tokens.extend(codes)
        look = self._mixed_len(self.look)
        if self.cache is None:
            if len(self.tokens) >= look:
                rows = torch.cat([self.prompt_rows,
                                  torch.from_numpy(reshape_mixed_codes(self.tokens[:look]))])
                self._flow(rows, self.prompt_mel, last=False)
                self.prompt_frames = self.prompt_mel.shape[0]
            return None
        if last_chunk:
            this = self.tokens
        else:
            this = None
            chunk = self._mixed_len(self.chunk_sizes[0])
            if len(self.tokens) >= chunk + look:
                this = self.tokens[:chunk + look]
                self.tokens = self.tokens[chunk:]
        if this is None:
            return None
        mel = self._flow(torch.from_numpy(reshape_mixed_codes(list(this))), None, last_chunk)
        self._truncate()
        speech = self._hift(mel, last_chunk)
        self.chunks[-1]["mel"] = mel
        if len(self.chunk_sizes) > 1:
            self.chunk_sizes.pop(0)
        return speech
