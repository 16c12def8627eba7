"""Streaming token2wav (python_backends.decoder.streaming) on tiny synthetic weights.

Against the plain reference of upstream's `CosyVoice_stream_impl_` (reference_streaming): the
flow's mel chunk by chunk, HiFT + caches + cross-fade given the same mel, and the audio end to
end. Batched streams at different positions against each stream alone, the chunk lengths
(960·3·ceil(N/5) samples in all), the cross-fade at the seams, the DiT cache / noise offset
schedule, and how far streaming is from the non-streamed decoder.

Tolerances: the flow is compared at 1e-5 (as tests/test_flow.py). Audio after differing flows
is not: the NSF source integrates f0 over each chunk, so on these weights a 1e-5 mel difference
becomes ~3e-3 of audio (measured); audio is compared at 1e-5 where the mel is the same.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from python_backends.decoder.flow import flow_inference
from python_backends.decoder.reference_streaming import ReferenceStream
from python_backends.decoder.streaming import (StreamingToken2Wav, hamming_halves, mixed_ids,
                                               stream_samples)
from python_backends.decoder.token2wav import Token2Wav
from python_backends.decoder.token_reshape import reshape_token_ids
from python_backends.settings import DECODER, EditxSettings

pytestmark = pytest.mark.usefixtures("torch_one_thread")

FADE = DECODER.stream_mel_cache_frames * 480  # 3840 samples
LOOK = 5  # ids of the 3 look-ahead rows


@pytest.fixture(scope="module")
def token2wav(tiny_editx, torch_one_thread):
    return Token2Wav.from_settings(EditxSettings(str(tiny_editx)))


@pytest.fixture(scope="module")
def decoder(token2wav):
    return StreamingToken2Wav.from_token2wav(token2wav)


def audio_ids(n: int, rng) -> np.ndarray:
    """n LLM ids in the mixed 2 vq02 + 3 vq06 pattern."""
    out = []
    for _ in range(-(-n // 5)):
        out += list(65536 + rng.integers(0, 1024, 2)) + list(65536 + 1024 + rng.integers(0, 4096, 3))
    return np.array(out[:n])


def request(n_ids: int, prompt_groups: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return dict(ids=audio_ids(n_ids, rng), prompt_ids=audio_ids(5 * prompt_groups, rng),
                prompt_mel=(rng.standard_normal((7 * prompt_groups, 80)) - 5).astype(np.float32),
                speaker_embedding=rng.standard_normal(192).astype(np.float32), seed=seed)


def open_stream(decoder, req, keep_mels=True):
    return decoder.open(req["prompt_ids"], req["prompt_mel"], req["speaker_embedding"],
                        req["seed"], keep_mels=keep_mels)


def run_alone(decoder, req, piece: int = 7):
    """Feed the ids in pieces of `piece`, then finish → (audio chunks, the stream)."""
    stream = open_stream(decoder, req)
    chunks = []
    for k in range(0, len(req["ids"]), piece):
        chunks += stream.feed(req["ids"][k:k + piece])
    return chunks + stream.finish(), stream


def run_reference(token2wav, req, **kwargs) -> ReferenceStream:
    """Upstream's calling pattern: one id per call, then an empty last call."""
    ref = ReferenceStream(token2wav.flow.model, token2wav.flow.noise, token2wav.hift,
                          req["prompt_ids"], req["prompt_mel"], req["speaker_embedding"],
                          req["seed"], **kwargs)
    for i in req["ids"]:
        ref.token2wav_stream([int(i) - 65536], last_chunk=False)
    ref.token2wav_stream([], last_chunk=True)
    return ref


def reference_vocoder(token2wav, req, mels) -> ReferenceStream:
    """The reference's HiFT half (caches, cross-fade) run on given flow mels."""
    ref = ReferenceStream(token2wav.flow.model, token2wav.flow.noise, token2wav.hift,
                          req["prompt_ids"], req["prompt_mel"], req["speaker_embedding"],
                          req["seed"])
    for k, mel in enumerate(mels):
        ref._hift(mel, last=k == len(mels) - 1)
    return ref


def expected_lengths(n: int, schedule=DECODER.stream_chunk_rows) -> list[int]:
    """Each audio chunk's length, from the schedule (independent of the implementation)."""
    if n == 0:
        return []
    sizes, left, out = list(schedule), n, []
    while left >= (sizes[0] // 3) * 5 + LOOK:
        out.append(960 * sizes[0] - (FADE if not out else 0))
        left -= (sizes[0] // 3) * 5
        if len(sizes) > 1:
            sizes.pop(0)
    return out + [960 * 3 * math.ceil(left / 5) + (FADE if out else 0)]


# ------------------------------------------------------------------ schedule and lengths

def test_upstream_constants_are_the_defaults(decoder):
    assert DECODER.stream_chunk_rows == (15, 24, 48)
    assert decoder.chunk_rows == (15, 24, 48) and decoder.source_cache == 3840
    assert decoder.lookahead_ids == mixed_ids(3) == LOOK and decoder.left_frames == 96
    fade_in, fade_out = hamming_halves(FADE)
    window = np.hamming(2 * FADE).astype(np.float32)
    np.testing.assert_array_equal(torch.cat([fade_in, fade_out]).numpy(), window)


@pytest.mark.parametrize("n", [1, 4, 5, 6, 29, 30, 31, 69, 70, 71, 144, 250])
def test_chunk_lengths_and_total_follow_the_formula(decoder, n):
    chunks, stream = run_alone(decoder, request(n, 3, seed=n), piece=11)
    assert [len(c) for c in chunks] == expected_lengths(n)
    assert sum(len(c) for c in chunks) == stream_samples(n) == 960 * 3 * math.ceil(n / 5)
    assert stream.done and all(c.dtype == np.float32 for c in chunks)


def test_total_length_equals_the_non_streamed_decoder(decoder, token2wav):
    req = request(143, 4, seed=2)
    chunks, _ = run_alone(decoder, req)
    full = token2wav.batch([dict(target_ids=req["ids"], prompt_ids=req["prompt_ids"],
                                 prompt_mel=req["prompt_mel"],
                                 speaker_embedding=req["speaker_embedding"], seed=2)])[0]
    assert sum(map(len, chunks)) == len(full) == 960 * 3 * 29


def test_a_stream_without_ids_gives_no_audio(decoder):
    stream = open_stream(decoder, request(0, 3, seed=0))
    assert stream.finish() == [] and stream.done


def test_first_chunk_waits_for_its_look_ahead(decoder):
    req = request(40, 3, seed=4)
    stream = open_stream(decoder, req)
    assert stream.feed(req["ids"][:4]) == [] and not stream.set_up  # no setup before 5 ids
    assert stream.feed(req["ids"][4:5]) == [] and stream.set_up
    assert stream.feed(req["ids"][5:29]) == []  # 29 < 25 + 5
    got = stream.feed(req["ids"][29:30])
    assert [len(c) for c in got] == [960 * 15 - FADE]
    stream.push(req["ids"][30:])  # 5 look-ahead ids + 10 more left: 9 rows, no waiting
    assert [len(c) for c in stream.finish()] == [960 * 9 + FADE]


# ------------------------------------------------------------------ against upstream's algorithm

@pytest.mark.parametrize("n_ids,kwargs", [
    (250, {}),  # 15, 24, 48, 48 rows, then a last chunk of 15: the DiT cache is cut twice
    (143, {}),  # not a multiple of 5: the last group is padded
    (96, {"chunk_rows": (6, 9), "left_frames": 20}),  # the cut after nearly every chunk
])
def test_stream_equals_the_reference_chunk_by_chunk(decoder, token2wav, n_ids, kwargs):
    req = request(n_ids, 4, seed=n_ids)
    dec = decoder if not kwargs else StreamingToken2Wav.from_token2wav(token2wav, **kwargs)
    chunks, stream = run_alone(dec, req, piece=13)
    ref = run_reference(token2wav, req, **kwargs)
    assert len(chunks) == len(ref.chunks) == len(stream.mels) >= 3
    for ours, mel, theirs in zip(chunks, stream.mels, ref.chunks):
        torch.testing.assert_close(mel, theirs["mel"], rtol=1e-5, atol=1e-5)
        assert len(ours) == len(theirs["audio"])
    same_mel = reference_vocoder(token2wav, req, stream.mels)
    for ours, theirs in zip(chunks, same_mel.chunks):
        np.testing.assert_allclose(ours, theirs["audio"].numpy(), rtol=0, atol=1e-5)
    # end to end, the two flows' last-bit differences are amplified by the source's phase
    end_to_end = max(np.abs(o - t["audio"].numpy()).max() for o, t in zip(chunks, ref.chunks))
    assert end_to_end < 2e-2
    assert float(np.abs(np.concatenate(chunks)).max()) > 0.05  # not silence


def test_dit_cache_and_noise_offset_follow_upstream(decoder):
    """The DiT cache (= the next chunk's noise offset) grows by each chunk's frames until it
    passes prompt + 96 frames, then stays there; the encoder's keeps every row."""
    req = request(250, 4, seed=5)
    stream = open_stream(decoder, req)
    stream.push(req["ids"])
    prompt_frames, seen = 2 * 12, []
    while stream.ready:
        decoder.step([stream])
        seen.append((stream.flow.cached_frames, stream.flow.cached_rows))
    stream.close()
    decoder.step([stream])
    seen.append((stream.flow.cached_frames, stream.flow.cached_rows))
    p = prompt_frames
    assert [f for f, _ in seen] == [p, p + 30, p + 78, p + 96, p + 96, p + 96]
    assert [r for _, r in seen] == [12, 12 + 15, 12 + 39, 12 + 87, 12 + 135, 12 + 150]


# ------------------------------------------------------------------ batching

def test_batched_streams_equal_each_alone(decoder):
    reqs = [request(250, 4, 11), request(110, 9, 12), request(157, 2, 13), request(41, 6, 14)]
    alone = [run_alone(decoder, r) for r in reqs]
    streams = [open_stream(decoder, r) for r in reqs]
    outs, pos, pieces, kinds = [[] for _ in reqs], [0] * 4, [7, 11, 3, 19], []
    while not all(s.done for s in streams):
        for i, (s, r) in enumerate(zip(streams, reqs)):
            if pos[i] < len(r["ids"]):
                s.push(r["ids"][pos[i]:pos[i] + pieces[i]])
                pos[i] += pieces[i]
            elif not s.closed:
                s.close()
        ready = [s for s in streams if s.ready]
        kinds.append(sorted((s.set_up, s.closed, s.flow.cached_rows) for s in ready))
        for s, wave in zip(ready, decoder.step(ready)):
            if wave is not None:
                outs[streams.index(s)].append(wave)
    mixed = [k for k in kinds if len(k) > 1 and len({c for *_, c in k}) > 1]
    assert mixed, "no step batched streams at different positions"
    assert any(len({(a, b) for a, b, _ in k}) > 1 for k in kinds), "no setup beside a chunk"
    for (chunks, lone), s, out in zip(alone, streams, outs):
        assert [len(c) for c in out] == [len(c) for c in chunks]
        for a, b in zip(s.mels, lone.mels):
            assert float((a - b).abs().max()) <= 1e-5
        assert max(np.abs(a - b).max() for a, b in zip(out, chunks)) < 2e-2


def test_batched_vocoder_equals_each_alone_on_the_same_mels(decoder):
    """The HiFT half of a step (mel/source/speech caches, cross-fade, held-back tail) for
    streams at different chunk indexes in one batch equals each stream alone."""
    reqs = [request(250, 4, 21), request(70, 3, 22), request(160, 5, 23)]
    mels = [run_alone(decoder, r)[1].mels for r in reqs]
    alone = []
    for r, m in zip(reqs, mels):
        s = open_stream(decoder, r, keep_mels=False)
        alone.append([decoder.vocode([(s, x, k == len(m) - 1)])[0] for k, x in enumerate(m)])
    streams = [open_stream(decoder, r, keep_mels=False) for r in reqs]
    starts, out = [0, 2, 1], [[] for _ in reqs]
    for t in range(max(st + len(m) for st, m in zip(starts, mels))):
        items = [(i, t - st) for i, st in enumerate(starts) if 0 <= t - st < len(mels[i])]
        batch = [(streams[i], mels[i][k], k == len(mels[i]) - 1) for i, k in items]
        for (i, _), wave in zip(items, decoder.vocode(batch)):
            out[i].append(wave)
    for a, b in zip(out, alone):
        assert [len(x) for x in a] == [len(x) for x in b]
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)


def test_same_seed_same_audio_any_feeding_and_other_seeds_differ(decoder):
    req = request(160, 4, seed=31)
    one_by_one, s1 = run_alone(decoder, req, piece=1)
    at_once, s2 = run_alone(decoder, req, piece=len(req["ids"]))
    assert len(one_by_one) == len(at_once)
    for a, b in zip(one_by_one, at_once):
        np.testing.assert_array_equal(a, b)
    reseeded, s3 = run_alone(decoder, {**req, "seed": 32})
    for a, b in zip(s1.mels, s3.mels):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the flow has no randomness
    assert max(np.abs(a - b).max() for a, b in zip(one_by_one, reseeded)) > 1e-3


# ------------------------------------------------------------------ seams

def test_seams_are_the_hamming_mix_of_the_overlapping_parts(decoder, token2wav):
    req = request(250, 4, seed=41)
    chunks, stream = run_alone(decoder, req)
    raw = [c["raw"].numpy() for c in reference_vocoder(token2wav, req, stream.mels).chunks]
    fade_in, fade_out = (w.numpy() for w in hamming_halves(FADE))
    hard_cut_gaps, our_gaps = [], []
    for k in range(1, len(chunks)):
        mix = raw[k][:FADE] * fade_in + raw[k - 1][-FADE:] * fade_out
        np.testing.assert_allclose(chunks[k][:FADE], mix, rtol=0, atol=1e-5)
        np.testing.assert_allclose(chunks[k - 1][-16:], raw[k - 1][-FADE - 16:-FADE],
                                   rtol=0, atol=1e-5)  # the tail held back, not dropped
        # the seam starts on the previous chunk's own continuation (weight 1.0 vs 0.08)
        continuation = raw[k - 1][-FADE]
        our_gaps.append(abs(chunks[k][0] - continuation))
        hard_cut_gaps.append(abs(raw[k][0] - continuation))
        assert our_gaps[-1] <= 0.081 * abs(raw[k][0]) + 1e-5
    assert max(hard_cut_gaps) > 5 * max(our_gaps)  # a hard cut would jump there
    audio = np.concatenate(chunks)
    jumps = np.abs(np.diff(audio))
    seams = np.cumsum([len(c) for c in chunks])[:-1] - 1
    elsewhere = np.delete(jumps, seams)
    assert jumps[seams].max() <= elsewhere.max()


# ------------------------------------------------------------------ against non-streamed decoding

def test_streaming_differs_from_the_full_decoder_as_expected(decoder, token2wav, capsys):
    """Chunks see less context than the full pass: the mel moves, moderately while the noise
    frames are the full pass's, much more once upstream's cut DiT cache freezes the noise
    offset (from the 4th chunk on). Measured here; printed with -s."""
    req = request(250, 4, seed=51)
    chunks, stream = run_alone(decoder, req)
    rows = torch.from_numpy(reshape_token_ids(req["ids"]))
    prompt = torch.from_numpy(reshape_token_ids(req["prompt_ids"]))
    mel, _ = flow_inference(token2wav.flow.model, rows[None], torch.tensor([len(rows)]),
                            prompt[None], torch.tensor([len(prompt)]),
                            token2wav.prompt_mel_frames(req["prompt_mel"], len(prompt))[None],
                            torch.from_numpy(req["speaker_embedding"])[None], token2wav.flow.noise)
    full = token2wav.batch([dict(target_ids=req["ids"], prompt_ids=req["prompt_ids"],
                                 prompt_mel=req["prompt_mel"],
                                 speaker_embedding=req["speaker_embedding"], seed=req["seed"])])[0]
    streamed = torch.cat(stream.mels, dim=1)
    assert streamed.shape == mel[0].shape
    diff = (streamed - mel[0]).abs()
    bounds = np.cumsum([0] + [m.shape[1] for m in stream.mels])
    per_chunk = [float(diff[:, a:b].max()) for a, b in zip(bounds[:-1], bounds[1:])]
    audio = np.concatenate(chunks)
    rel = float(np.sqrt(np.mean((audio - full) ** 2) / np.mean(full ** 2)))
    with capsys.disabled():
        print(f"\nstreaming vs full: mel max |diff| per chunk {np.round(per_chunk, 3).tolist()} "
              f"(full mel std {float(mel.std()):.2f}); audio max |diff| "
              f"{float(np.abs(audio - full).max()):.3f}, relative rms {rel:.2f}")
    assert len(audio) == len(full)
    assert 1e-3 < per_chunk[0] < 1.0  # same noise frames: close, not equal
    assert max(per_chunk[3:]) > 2 * max(per_chunk[:3])  # other noise frames after the cut
    assert float(np.abs(audio - full).max()) > 1e-2


# ------------------------------------------------------------------ refusals

def test_refusals(decoder, token2wav):
    with pytest.raises(ValueError, match="multiples of 3"):
        StreamingToken2Wav.from_token2wav(token2wav, chunk_rows=(15, 25))
    stream = open_stream(decoder, request(10, 3, seed=0))
    stream.close()
    with pytest.raises(ValueError, match="after close"):
        stream.push([65536])
    with pytest.raises(ValueError, match="only once"):
        decoder.step([stream, stream])
    other = StreamingToken2Wav.from_token2wav(token2wav)
    with pytest.raises(ValueError, match="another decoder"):
        other.step([stream])
    with pytest.raises(ValueError, match="below 70656"):
        open_stream(decoder, request(10, 3, seed=0)).push([65536 + 5120])
