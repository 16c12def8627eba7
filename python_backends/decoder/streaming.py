"""Streaming token2wav (EditX `CosyVoice_stream_impl_.token2wav_stream`), batched across streams.

A stream is opened with the prompt (the same inputs `Token2Wav.batch` takes), then LLM ids are
pushed as they come; `StreamingToken2Wav.step` runs one unit of work for each of N streams in
one batch and returns each stream's new audio. Per stream, as upstream:

1. setup, once ≥ 5 ids (3 look-ahead rows) are in: the flow runs over prompt rows + those
   look-ahead rows with cond = prompt mel and keeps only its caches;
2. chunk k: rows_k = schedule[min(k, last)] (15, 24, 48, 48, …) rows plus the 3 look-ahead
   rows are ready → flow chunk (cond 0) → mel; the buffer then drops the chunk's ids only;
3. after `close`, full chunks as before while there are ids for them, then the last chunk
   takes every remaining id, with zero look-ahead (so the chunks depend only on the ids, not
   on how fast they came: upstream's caller pushes one id per call).

Each chunk's mel is vocoded with the previous chunk's last 8 mel frames in front and its
source's first 3840 samples replaced by the previous source's last 3840; the first 3840
samples of the audio are cross-faded with the previous chunk's held-back last 3840 by a
Hamming window (np.hamming(7680) halves, as upstream: they sum to ≈1.08, not 1), and every
chunk but the last holds its last 3840 samples back. So a stream of N ids gives exactly
960·3·ceil(N/5) samples in all, as the non-streamed decoder: the first chunk 960·15 − 3840,
then 960·rows_k, the last 960·rows_last + 3840.

HiFT's random source draws come from the stream's own generator, seeded once, in upstream's
order per chunk (initial phases, source noise, and the unused `randn_like(uv)`), so a stream's
audio does not depend on the batch it runs in.

Where we differ from upstream: a stream closed before its 5th id, or by the call that brings
the 5th, still gets its audio (upstream only sets its caches up then and returns nothing);
non-audio ids are clamped to 0 as in the non-streamed flow (upstream's stream fails on them);
the DiT cache has no 1000-frame cap (upstream's fixed buffer; prompts over ~16 s fail there).
Batched streams equal each stream alone up to float rounding (~3e-6 on the mel, as the
non-streamed batch); HiFT's f0-integrated phase turns that into up to ~1e-3 of audio.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from ..settings import DECODER, LLM
from .flow import LoadedFlow
from .flow_stream import FlowChunk, FlowStreamState, flow_chunks, new_flow_state
from .hift import HiFTGenerator, batched_source, decode_source, masked_mel
from .token2wav import resize_prompt_mel
from .token_reshape import GROUP, codes_from_token_ids, reshape_mixed_codes, reshape_token_ids

ROWS_PER_GROUP = 3  # token_reshape: 5 mixed ids → 3 rows


def mixed_ids(rows: int) -> int:
    """Ids that make `rows` rows (upstream's `_mixed_len`)."""
    return rows // ROWS_PER_GROUP * GROUP


def stream_samples(n_ids: int, samples_per_row: int = DECODER.samples_per_row) -> int:
    """Total samples a stream of n_ids ids gives: 960 · 3 · ceil(n/5)."""
    return -(-n_ids // GROUP) * ROWS_PER_GROUP * samples_per_row


def hamming_halves(samples: int, dtype=torch.float32, device=None):
    """(fade-in, fade-out) halves of np.hamming(2·samples), in the model dtype as upstream."""
    window = torch.from_numpy(np.hamming(2 * samples)).to(device=device, dtype=dtype)
    return window[:samples], window[samples:]


@dataclasses.dataclass
class _Vocoder:
    """One stream's HiFT caches: the last mel frames, source and (faded) speech samples."""

    mel: torch.Tensor | None = None  # [80, ≤8]
    source: torch.Tensor | None = None  # [≤3840]
    speech: torch.Tensor | None = None  # [≤3840]


class AudioStream:
    """One request's streaming state. Push LLM ids (`<audio_N>` = 65536 + N) as they come,
    `close()` after the last; `feed`/`finish` also run the decoder on this stream alone."""

    def __init__(self, decoder: "StreamingToken2Wav", prompt_rows: np.ndarray,
                 prompt_mel: torch.Tensor, flow_state: FlowStreamState, seed: int,
                 keep_mels: bool = False):
        self.decoder = decoder
        self.mels: list[torch.Tensor] | None = [] if keep_mels else None  # each chunk's flow mel
        self.prompt_rows = prompt_rows
        self.prompt_mel = prompt_mel
        self.flow = flow_state
        self.generator = torch.Generator().manual_seed(int(seed))
        self.vocoder = _Vocoder()
        self.codes: list[int] = []  # mixed codes not yet consumed (upstream's token buffer)
        self.chunk_rows = list(decoder.chunk_rows)
        self.set_up = False
        self.closed = False
        self.done = False

    def push(self, token_ids: Sequence[int] | np.ndarray) -> None:
        if self.closed:
            raise ValueError("AudioStream.push after close")
        codes = codes_from_token_ids(token_ids)
        if codes.size and int(codes.max()) >= LLM.audio_tokens:
            raise ValueError(f"AudioStream.push: ids must be below "
                             f"{LLM.audio_token_offset + LLM.audio_tokens} (<audio_5119>)")
        self.codes += codes.tolist()

    def close(self) -> None:
        self.closed = True
        if not self.set_up and not self.codes:
            self.done = True  # no ids at all: no audio

    @property
    def ready(self) -> bool:
        """Whether `step` has work for this stream now."""
        return self._next(peek=True) is not None

    def feed(self, token_ids) -> list[np.ndarray]:
        """push + run this stream alone until it waits for more ids → new audio chunks."""
        self.push(token_ids)
        return self.decoder.drain([self])[0]

    def finish(self) -> list[np.ndarray]:
        """close + run the tail → the last audio chunks."""
        self.close()
        return self.decoder.drain([self])[0]

    def _next(self, peek: bool = False) -> tuple[str, np.ndarray | None] | None:
        """The next unit of work: ("setup" | "chunk" | "last", token rows), consuming the ids
        unless peek (then no rows are built: `ready` asks on every scheduler pass). None:
        waiting for ids, or done."""
        if self.done:
            return None
        look = self.decoder.lookahead_ids
        if not self.set_up:
            if not (len(self.codes) >= look or (self.closed and self.codes)):
                return None
            if peek:
                return "setup", None
            self.set_up = True
            return "setup", np.concatenate([self.prompt_rows, reshape_mixed_codes(self.codes[:look])])
        chunk = mixed_ids(self.chunk_rows[0])
        # a closed stream still takes full chunks first: the chunks depend on the ids alone,
        # not on how many arrived before the decoder got to them
        if self.closed and len(self.codes) < chunk + look:
            if peek:
                return "last", None
            rows = reshape_mixed_codes(self.codes)
            self.codes, self.done = [], True
            return "last", rows
        if len(self.codes) < chunk + look:
            return None
        if peek:
            return "chunk", None
        rows = reshape_mixed_codes(self.codes[:chunk + look])
        self.codes = self.codes[chunk:]
        if len(self.chunk_rows) > 1:
            self.chunk_rows.pop(0)
        return "chunk", rows


class StreamingToken2Wav:
    """The streaming decoder of one flow + HiFT pair (model-wide; streams hold their state)."""

    def __init__(self, flow: LoadedFlow, hift: HiFTGenerator,
                 chunk_rows: Sequence[int] = DECODER.stream_chunk_rows,
                 mel_cache_frames: int = DECODER.stream_mel_cache_frames,
                 left_frames: int = DECODER.stream_estimator_left_frames,
                 n_steps: int = DECODER.flow_steps):
        if not chunk_rows or any(r < ROWS_PER_GROUP or r % ROWS_PER_GROUP for r in chunk_rows):
            raise ValueError(f"chunk_rows must be positive multiples of {ROWS_PER_GROUP}, got "
                             f"{list(chunk_rows)}")
        self.flow, self.hift = flow, hift
        self.chunk_rows = tuple(int(r) for r in chunk_rows)
        self.mel_cache_frames = int(mel_cache_frames)
        self.source_cache = self.mel_cache_frames * hift.samples_per_frame
        self.left_frames, self.n_steps = int(left_frames), int(n_steps)
        self.lookahead_ids = mixed_ids(flow.model.cfg.encoder.pre_lookahead_len)
        param = next(flow.model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.fade_in, self.fade_out = hamming_halves(self.source_cache, self.dtype, self.device)

    @classmethod
    def from_token2wav(cls, token2wav, **kwargs) -> "StreamingToken2Wav":
        return cls(token2wav.flow, token2wav.hift, **kwargs)

    @torch.inference_mode()
    def open(self, prompt_ids, prompt_mel: np.ndarray, speaker_embedding: np.ndarray,
             seed: int, keep_mels: bool = False) -> AudioStream:
        """A new stream: prompt_ids (65536-based merged prompt ids), prompt_mel [T, 80] (nearest-
        resampled to 2 frames per prompt row, as Token2Wav), speaker_embedding [192], seed.
        keep_mels: record each chunk's flow mel in `stream.mels` (tests, diagnostics)."""
        rows = reshape_token_ids(prompt_ids)
        mel = resize_prompt_mel(prompt_mel, self.flow.model.up_rate * len(rows))
        spk = torch.from_numpy(np.asarray(speaker_embedding, np.float32))
        state = new_flow_state(self.flow.model, spk)
        return AudioStream(self, rows, mel.to(self.device, self.dtype), state, seed, keep_mels)

    @torch.inference_mode()
    def step(self, streams: Sequence[AudioStream]) -> list[np.ndarray | None]:
        """One unit of work (setup, chunk or last chunk) for each ready stream, all in one
        batch → per stream its new float32 audio, or None (setup, or nothing ready)."""
        if len({id(s) for s in streams}) != len(streams):
            raise ValueError("step: a stream may appear only once")
        if any(s.decoder is not self for s in streams):
            raise ValueError("step: a stream of another decoder")
        work = [(i, s, s._next()) for i, s in enumerate(streams)]
        work = [(i, s, w) for i, s, w in work if w is not None]
        out: list[np.ndarray | None] = [None] * len(streams)
        if not work:
            return out
        chunks = [FlowChunk(s.flow, torch.from_numpy(rows), kind == "last",
                            s.prompt_mel if kind == "setup" else None)
                  for _, s, (kind, rows) in work]
        mels = flow_chunks(self.flow.model, self.flow.noise, chunks, self.n_steps,
                           self.left_frames)
        voiced = [(i, s, mel, kind == "last") for (i, s, (kind, _)), mel in zip(work, mels)
                  if kind != "setup"]
        for _, s, mel, _ in voiced:
            if s.mels is not None:
                s.mels.append(mel.float().cpu())
        if voiced:
            for (i, *_), wave in zip(voiced, self.vocode([v[1:] for v in voiced])):
                out[i] = wave
        return out

    def drain(self, streams: Sequence[AudioStream]) -> list[list[np.ndarray]]:
        """`step` until no stream is ready → per stream the audio chunks it produced."""
        out: list[list[np.ndarray]] = [[] for _ in streams]
        while any(s.ready for s in streams):
            for chunks, wave in zip(out, self.step(streams)):
                if wave is not None:
                    chunks.append(wave)
        return out

    @torch.inference_mode()
    def vocode(self, items: Sequence[tuple[AudioStream, torch.Tensor, bool]]) -> list[np.ndarray]:
        """HiFT over each stream's [cached mel ‖ new mel] with its source cache, then the
        cross-fade, the cache update and the held-back tail."""
        spf, keep = self.hift.samples_per_frame, self.source_cache
        mels = [mel if s.vocoder.mel is None else torch.cat([s.vocoder.mel, mel], dim=1)
                for s, mel, _ in items]
        lens = [m.shape[1] for m in mels]
        batch = torch.zeros(len(items), mels[0].shape[0], max(lens), dtype=self.dtype,
                            device=self.device)
        for i, m in enumerate(mels):
            batch[i, :, :lens[i]] = m
        batch = masked_mel(self.hift, batch, lens)
        gens = [s.generator for s, _, _ in items]
        source = batched_source(self.hift, batch, lens, gens)
        for i, ((s, _, _), n) in enumerate(zip(items, lens)):
            torch.randn(1, n * spf, 1, generator=s.generator)  # upstream's unused randn_like(uv)
            if s.vocoder.source is not None:
                source[i, :s.vocoder.source.shape[0]] = s.vocoder.source
        wave = decode_source(self.hift, batch, source, lens)
        out = []
        for i, ((s, _, last), n) in enumerate(zip(items, lens)):
            speech, src, cache = wave[i, :n * spf].clone(), source[i, :n * spf], s.vocoder
            if cache.speech is not None:
                speech[:keep] = speech[:keep] * self.fade_in + cache.speech * self.fade_out
            cache.mel = mels[i][:, -self.mel_cache_frames:].clone()
            cache.source = src[-keep:].clone()
            cache.speech = speech[-keep:].clone()
            if not last:
                speech = speech[:-keep]
            out.append(speech.float().cpu().numpy())
        return out
