"""Deterministic test speech from Debian's espeak-ng (no model hub, no recordings needed).

`synthesize` speaks one text; `speech_of_duration` strings sentences in several languages
and voices together until a requested length is reached. Both return samples at espeak's
native rate (22050 Hz) together with that rate; resample them where 16 kHz is needed.
"""
from __future__ import annotations

import functools
import io
import shutil
import struct
import subprocess

import numpy as np
import soundfile as sf

ESPEAK = "espeak-ng"

# (voice, text): several languages and scripts so the sounds are varied.
SENTENCES: tuple[tuple[str, str], ...] = (
    ("en", "The quick brown fox jumps over the lazy dog near the river bank."),
    ("en", "Please call Stella and ask her to bring these things with her from the store."),
    ("en", "A large rainbow appeared in the sky after the heavy summer storm."),
    ("en", "Seven thousand four hundred and twelve people watched the final match."),
    ("en-gb", "Would you mind opening the window? It is getting rather warm in here."),
    ("en-us", "Our meeting has been moved to Thursday afternoon at half past three."),
    ("cmn", "今天天气很好，我们一起去公园散步吧。"),
    ("cmn", "这个城市的夜景非常漂亮，很多游客都喜欢来这里拍照。"),
    ("cmn", "请把那本书放在桌子上，然后关上门。"),
    ("cmn", "科学家们正在研究新的能源技术，希望减少污染。"),
    ("yue", "我哋听日一齊去飲茶，好唔好呀？"),
    ("yue", "呢度嘅天氣好熱，記得要飲多啲水。"),
    ("de", "Der Zug nach München fährt heute mit zehn Minuten Verspätung ab."),
    ("de", "Könnten Sie mir bitte sagen, wie ich zum Bahnhof komme?"),
    ("fr", "Le petit chat dort tranquillement sur le canapé du salon."),
    ("fr", "Nous partirons en vacances au bord de la mer le mois prochain."),
    ("es", "Mañana por la mañana vamos a visitar a nuestros abuelos en el campo."),
    ("it", "La cena è pronta, venite a tavola prima che si raffreddi."),
    ("ru", "Сегодня вечером мы пойдём в театр смотреть новую пьесу."),
    ("ja", "きょうはとてもいいてんきですね。"),
)

VARIANTS: tuple[str, ...] = ("", "+m1", "+m3", "+m7", "+f1", "+f2", "+f3", "+f4")


class EspeakNotFound(RuntimeError):
    pass


def _espeak_path() -> str:
    path = shutil.which(ESPEAK)
    if path is None:
        raise EspeakNotFound(
            f"'{ESPEAK}' was not found on PATH; synthetic test speech needs it "
            "(Debian/Ubuntu: apt-get install espeak-ng)")
    return path


def _fix_stream_header(wav: bytes) -> bytes:
    """espeak-ng --stdout writes placeholder RIFF/data sizes (it streams); set the real ones."""
    if len(wav) < 12 or wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise RuntimeError(f"{ESPEAK} did not return a WAV stream ({len(wav)} bytes)")
    out = bytearray(wav)
    struct.pack_into("<I", out, 4, len(out) - 8)
    pos = 12
    while pos + 8 <= len(out):
        chunk, size = out[pos:pos + 4], struct.unpack_from("<I", out, pos + 4)[0]
        if chunk == b"data":
            struct.pack_into("<I", out, pos + 4, len(out) - pos - 8)
            break
        pos += 8 + size + (size & 1)
    return bytes(out)


@functools.lru_cache(maxsize=512)
def _synthesize_cached(text: str, voice: str, speed_wpm: int, pitch: int) -> tuple[bytes, int]:
    cmd = [_espeak_path(), "--stdout", "--stdin", "-b", "1", "-v", voice,
           "-s", str(int(speed_wpm)), "-p", str(int(pitch))]
    proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace').strip()}")
    audio, rate = sf.read(io.BytesIO(_fix_stream_header(proc.stdout)), dtype="float32",
                          always_2d=True)
    return audio.mean(axis=1).astype(np.float32).tobytes(), int(rate)


def synthesize(text: str, voice: str = "en", speed_wpm: int = 160,
               pitch: int = 50) -> tuple[np.ndarray, int]:
    """Speak `text` → (float32 mono samples in [-1, 1], sample rate)."""
    raw, rate = _synthesize_cached(text, voice, int(speed_wpm), int(pitch))
    return np.frombuffer(raw, dtype=np.float32).copy(), rate


def speech_with_transcript(seconds: float, seed: int = 0) -> tuple[np.ndarray, int, str]:
    """`speech_of_duration` and the sentences it speaks (the last one may be cut short)."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    rng = np.random.default_rng(seed)
    pieces: list[np.ndarray] = []
    spoken: list[str] = []
    have, rate, target = 0, None, None
    while target is None or have < target:
        order = rng.permutation(len(SENTENCES))
        for i in order:
            voice, text = SENTENCES[int(i)]
            variant = VARIANTS[int(rng.integers(len(VARIANTS)))]
            audio, sr = synthesize(text, voice + variant, int(rng.integers(135, 196)),
                                   int(rng.integers(25, 76)))
            if rate is None:
                rate, target = sr, int(round(seconds * sr))
            elif sr != rate:
                raise RuntimeError(f"espeak-ng voice {voice!r} speaks at {sr} Hz, others at {rate} Hz")
            pause = np.zeros(int(rng.integers(int(0.05 * sr), int(0.35 * sr))), np.float32)
            pieces += [audio, pause]
            spoken.append(text)
            have += len(audio) + len(pause)
            if have >= target:
                break
    return np.concatenate(pieces)[:target], rate, " ".join(spoken)


def speech_of_duration(seconds: float, seed: int = 0) -> tuple[np.ndarray, int]:
    """Exactly round(seconds·rate) samples of multilingual speech (at espeak's rate), and the rate.

    Sentences, voice variants, speaking rates, pitches and pauses are drawn from `seed`, so a
    seed always gives the same samples.
    """
    audio, rate, _ = speech_with_transcript(seconds, seed)
    return audio, rate
