"""Torch fbank/LFR/CMVN (python_backends.tokenizer.fbank_torch) is torchaudio's fbank bit for bit
(against numbers real torchaudio printed on an x86-64 CPU, tests/data/torchaudio_fbank.npz), the
vq02 features are those of the original's streaming frontend bit for bit, and the frontend stays
on its device (checked on the `meta` device, where any stray CPU tensor or read-back fails).
CUDA variants skip, with the reason, where no GPU is present."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from build_scripts.espeak_clips import speech_of_duration
from build_scripts.make_synthetic_weights import build
from python_backends.tokenizer import fbank_torch
from python_backends.tokenizer.fbank_frontend import (ParaformerFrontend, final_call_frames,
                                                      stream_frame_count)
from python_backends.tokenizer.paraformer_weights import load_paraformer
from python_backends.tokenizer.reference import kaldi_fbank
from python_backends.tokenizer.reference.vq02 import ReferenceVq02
from python_backends.tokenizer.resample import resample
from python_backends.settings import TokenizerSettings
from python_backends.tokenizer.vq02 import Vq02Tokenizer
from python_backends.tokenizer.whisper_mel import log_mel

ROOT = Path(__file__).resolve().parents[1]
# written by tests/data/torchaudio_fbank.py with torch 2.8.0 + torchaudio 2.8.0 (upstream's
# pins) on the CPU; torch 2.13.0 running torchaudio 2.11.1's kaldi.py gives the same bytes
TORCHAUDIO = ROOT / "tests" / "data" / "torchaudio_fbank.npz"
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA is not available on this machine: the GPU "
                                "variant runs only where torch sees a GPU")
# CUDA against the CPU: cuFFT and cuBLAS round differently (log-fbank values span about
# -16 … 27). A bin far below its frame's loudest is under float32's resolution of that frame's
# FFT: its energy moves by about eps·(peak energy), i.e. by eps·exp(peak − value) in the log
# domain, so such bins get more than FBANK_ATOL.
FBANK_ATOL = 5e-3
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def assert_fbank_close(got: np.ndarray, expected: np.ndarray) -> None:
    peak = expected.max(axis=1, keepdims=True)
    allowed = FBANK_ATOL + FLOAT32_EPS * np.exp(np.minimum(peak - expected, 60.0))
    worst = np.argmax(np.abs(got - expected) - allowed)
    diff = np.abs(got - expected).flat[worst]
    assert diff <= allowed.flat[worst], (f"|diff| {diff:.2e} > {allowed.flat[worst]:.2e} at "
                                         f"{np.unravel_index(worst, got.shape)}")
CLIPS = [(0.3, 1), (1.0, 2), (2.9, 3), (3.84, 4), (7.7, 5), (12.3, 6), (31.0, 7)]
pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def settings() -> TokenizerSettings:
    return TokenizerSettings(weights_dir=str(build("tiny", ROOT / "build" / "weights" / "tiny")))


@pytest.fixture(scope="module")
def weights(settings):
    return load_paraformer(settings.paraformer_dir)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    out = []
    for seconds, seed in CLIPS:
        audio, rate = speech_of_duration(seconds, seed=seed)
        out.append(resample(audio, rate, 16000))
    return out


@pytest.fixture(scope="module")
def torchaudio_numbers() -> dict[str, np.ndarray]:
    with np.load(TORCHAUDIO) as data:
        return {name: data[name] for name in data.files}


def frontend(weights, device="cpu") -> ParaformerFrontend:
    return ParaformerFrontend(weights.cmvn_shift, weights.cmvn_scale, 0.0, device=device)


def funasr_call(audio: np.ndarray, window: str = "hamming") -> torch.Tensor:
    """FunASR's `kaldi.fbank` call (samples ×32768), through the oracle's plain transcription."""
    waveform = (torch.from_numpy(audio) * (1 << 15)).unsqueeze(0)
    return kaldi_fbank.fbank(waveform, num_mel_bins=80, frame_length=25, frame_shift=10, dither=0.0,
                             energy_floor=0.0, window_type=window, sample_frequency=16000)


# ---- torchaudio's own numbers ----------------------------------------------------------------

@pytest.mark.parametrize("case, window, samples", [
    ("funasr_hamming", "hamming", 4000), ("funasr_hamming_short", "hamming", 720),
    ("funasr_hanning", "hanning", 4000), ("funasr_povey", "povey", 4000),
    ("funasr_rectangular", "rectangular", 4000), ("funasr_blackman", "blackman", 4000)])
def test_fbank_is_torchaudios_bit_for_bit(torchaudio_numbers, case, window, samples):
    """FunASR's call of torchaudio's fbank; the short case is a 3-row matrix product."""
    signal, expected = torchaudio_numbers["signal"][:samples], torchaudio_numbers[case]
    np.testing.assert_array_equal(fbank_torch.TorchFbank(window=window)(signal).numpy(), expected)
    np.testing.assert_array_equal(funasr_call(signal, window).numpy(), expected)


def test_speaker_fbank_is_torchaudios_bit_for_bit(torchaudio_numbers):
    """CosyVoice's call: torchaudio's defaults (povey), samples not scaled."""
    signal, expected = torchaudio_numbers["signal"], torchaudio_numbers["cosyvoice_povey"]
    got = fbank_torch.TorchFbank(window="povey", scale=1)(signal).numpy()
    np.testing.assert_array_equal(got, expected)
    plain = kaldi_fbank.fbank(torch.from_numpy(signal).unsqueeze(0), num_mel_bins=80, dither=0,
                              sample_frequency=16000)
    np.testing.assert_array_equal(plain.numpy(), expected)


def test_pinned_numbers_cover_the_edges(torchaudio_numbers):
    hamming = torchaudio_numbers["funasr_hamming"]
    assert str(torchaudio_numbers["versions"]).startswith("torch 2.8.0")
    assert np.all(hamming[10:13] == np.log(np.float32(FLOAT32_EPS)))  # digital silence
    assert hamming.max() > 25  # ±1 alternation at Nyquist, ×32768
    # torchaudio's own 3-frame call differs in the last bits from the first 3 of 23 frames
    short = torchaudio_numbers["funasr_hamming_short"]
    assert not np.array_equal(short, hamming[:3])
    np.testing.assert_allclose(short, hamming[:3], rtol=0, atol=1e-5)


def test_batch_equals_torchaudios_calls_one_by_one(torchaudio_numbers):
    """A packed batch (a 3- and a 1-row utterance among 23-row ones) gives each utterance what
    torchaudio's call on it alone gives: short ones are recomputed on their own."""
    signal = torchaudio_numbers["signal"]
    batch = [signal, signal[:720], signal, signal[:400]]
    packed, counts = fbank_torch.TorchFbank().packed(batch)
    assert counts == [23, 3, 23, 1]
    expected = [torchaudio_numbers["funasr_hamming"], torchaudio_numbers["funasr_hamming_short"],
                torchaudio_numbers["funasr_hamming"], torchaudio_numbers["funasr_hamming"][:1]]
    np.testing.assert_array_equal(packed.numpy(), np.concatenate(expected))


# ---- fbank on speech, against the oracle's plain transcription -------------------------------

def test_fbank_equals_plain_torchaudio_on_speech(clips):
    fbank = fbank_torch.TorchFbank()
    for audio in clips:
        got = fbank(audio)
        assert got.shape == (fbank_torch.num_fbank_frames(len(audio)), 80)
        torch.testing.assert_close(got, funasr_call(audio), rtol=0, atol=0)


@pytest.mark.parametrize("window", ["hanning", "povey", "rectangular", "blackman"])
def test_other_windows_equal_plain_torchaudio(clips, window):
    got = fbank_torch.TorchFbank(window=window)(clips[2])
    torch.testing.assert_close(got, funasr_call(clips[2], window), rtol=0, atol=0)


@pytest.mark.parametrize("samples", [0, 1, 399, 400, 401, 559, 560, 1040, 3839, 3840, 3841, 4160, 8319])
def test_edge_lengths_equal_plain_torchaudio(samples):
    audio = (0.2 * np.random.default_rng(samples).standard_normal(samples)).astype(np.float32)
    got = fbank_torch.TorchFbank()(audio)
    if samples < 400:  # torchaudio refuses less than one frame; the frontend has no frame there
        assert got.shape == (0, 80)
        return
    torch.testing.assert_close(got, funasr_call(audio), rtol=0, atol=0)


def test_silence_hits_the_log_floor():
    got = fbank_torch.TorchFbank()(np.zeros(1600, np.float32))
    assert torch.all(got == np.log(np.float32(FLOAT32_EPS)))


def test_batch_in_passes_equals_one_by_one(clips):
    fbank = fbank_torch.TorchFbank(frames_per_pass=500)  # several passes for the long clips
    packed, counts = fbank.packed(clips)
    assert counts == [fbank_torch.num_fbank_frames(len(a)) for a in clips]
    singles = torch.cat([fbank_torch.TorchFbank()(a) for a in clips])
    torch.testing.assert_close(packed, singles, rtol=0, atol=0)


@pytest.mark.parametrize("rows, per_pass", [(5, 100), (100, 100), (101, 100), (30, 24), (1000, 7)])
def test_passes_are_near_equal_and_not_short(rows, per_pass):
    bounds = fbank_torch.pass_bounds(rows, per_pass)
    assert bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1
    assert len(sizes) == 1 or min(sizes) >= fbank_torch.MIN_PASS_ROWS


def test_dither_is_seeded_noise(clips):
    plain = fbank_torch.TorchFbank()(clips[1])
    noisy = [fbank_torch.TorchFbank(dither=1.0, generator=torch.Generator().manual_seed(5))(clips[1])
             for _ in range(2)]
    torch.testing.assert_close(noisy[0], noisy[1], rtol=0, atol=0)
    # ±1 (16-bit LSB) noise: invisible in speech, fills the digital silence (log floor -15.9)
    change = (noisy[0] - plain).abs()
    assert 0 < float(change.median()) < 0.01
    assert float(change[plain < -15].min()) > 5


def test_unknown_window_is_refused():
    with pytest.raises(ValueError, match="unknown fbank window 'kaiser'"):
        fbank_torch.TorchFbank(window="kaiser")
    with pytest.raises(NotImplementedError, match="subtract_mean"):
        kaldi_fbank.fbank(torch.zeros(1, 800), subtract_mean=True)


# ---- LFR/CMVN and the frontend ---------------------------------------------------------------

@pytest.fixture(scope="module")
def oracle(settings):
    return ReferenceVq02(settings.paraformer_dir, settings.centroids_path, 0.0)


STREAM_LENGTHS = [4320, 4400, 5000, 7680, 7681, 7700, 8000, 9000, 11519, 11600, 12000]


def test_frontend_features_are_the_streaming_frontends(weights, clips, oracle):
    """Features = what the original's chunk-by-chunk FunASR frontend gives with torchaudio's
    fbank (the oracle), bit for bit, its short final fbank call included."""
    noise = [(0.2 * np.random.default_rng(n).standard_normal(n)).astype(np.float32) for n in STREAM_LENGTHS]
    audios = clips[:5] + noise
    fe = frontend(weights)
    got, lengths = fe.packed(audios)
    assert lengths == [stream_frame_count(len(a)) for a in audios]
    expected = [oracle.features(a).numpy() for a in audios]
    np.testing.assert_array_equal(got.numpy(), np.concatenate(expected))
    for audio, want in zip(audios, expected):
        np.testing.assert_array_equal(fe(audio), want)
    print(f"\nLFR+CMVN features vs the streaming frontend: {sum(lengths)} rows, identical")


@pytest.mark.parametrize("samples, frames", [(0, 0), (399, 0), (400, 1), (3840, 22), (3841, 22),
                                             (3919, 22), (3920, 1), (5000, 7), (7680, 24),
                                             (11519, 24), (11600, 1)])
def test_final_call_frames(samples, frames):
    assert final_call_frames(samples) == frames


def test_fbank_rows_are_the_streams_calls(oracle, monkeypatch):
    """The original frontend's fbank calls (caught by wrapping them), end to end, equal our rows
    with the final call recomputed alone; its row count is `final_call_frames`. (With x86-64
    MKL a 1–3 row final call rounds unlike the same rows in a longer product: 4320, 8000, 12000.)"""
    calls: list[torch.Tensor] = []
    plain = kaldi_fbank.fbank

    def caught(waveform, **options):
        calls.append(plain(waveform, **options))
        return calls[-1]

    monkeypatch.setattr(kaldi_fbank, "fbank", caught)
    audios = [(0.2 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
              for n in STREAM_LENGTHS + [3840, 3841, 3920, 3999, 7760]]
    streams = []
    for audio in audios:
        calls.clear()
        list(oracle._chunks(audio, {}))
        assert len(calls[-1]) == final_call_frames(len(audio)), len(audio)
        streams.append(torch.cat(calls))
    finals = [final_call_frames(len(a)) for a in audios]
    got, counts = fbank_torch.TorchFbank().packed(audios, own_call_rows=finals)
    assert counts == [len(s) for s in streams]
    torch.testing.assert_close(got, torch.cat(streams), rtol=0, atol=0)


def test_frontend_short_and_empty_batches(weights):
    fe = frontend(weights)
    audios = [np.zeros(100, np.float32), np.full(3841, 0.01, np.float32), np.zeros(0, np.float32)]
    feats, lengths = fe.packed(audios)
    assert lengths == [0, stream_frame_count(3841), 0] and feats.shape == (sum(lengths), 560)
    empty, none = fe.packed([])
    assert empty.shape == (0, 560) and none == []
    assert fe(audios[0]).shape == (0, 560)


def test_vq02_tokens_equal_the_oracles(settings, clips, oracle):
    tokenizer = Vq02Tokenizer(str(settings.paraformer_dir), str(settings.centroids_path), "cpu", 0.0)
    codes = tokenizer(clips[:5])
    for audio, got in zip(clips[:5], codes):
        np.testing.assert_array_equal(got, oracle(audio))
    print(f"\nvq02 tokens vs the oracle (cpu): {sum(map(len, codes))} codes, all identical")


# ---- device cleanliness ----------------------------------------------------------------------

class DeviceLog(TorchDispatchMode):
    """Records the devices of every aten op's tensor arguments and results."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, set[str]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = tree_flatten((args, kwargs, out))[0]
        self.ops.append((str(func), {t.device.type for t in leaves if isinstance(t, torch.Tensor)}))
        return out

    def off_device(self) -> list[str]:
        """Ops touching the CPU other than host→device copies (lift_fresh wraps host input)."""
        allowed = {"aten.lift_fresh.default", "aten._to_copy.default"}
        return [op for op, devices in self.ops if devices != {"meta"} and op not in allowed]

    def host_to_device(self) -> int:
        return sum(op == "aten._to_copy.default" and devices == {"cpu", "meta"}
                   for op, devices in self.ops)


def test_torch_frontend_stays_on_device(weights, clips):
    """On `meta` every op must get meta tensors (mixing raises) and nothing can be read back;
    the only CPU contact is the copy of each utterance and of the two per-utterance counts."""
    meta_fe = frontend(weights, device="meta")
    meta_fe.packed(clips[:1])  # caches (window, mel banks) are built once per device
    with DeviceLog() as log:
        feats, lengths = meta_fe.packed(clips[:3])
    assert feats.device.type == "meta" and feats.shape == (sum(lengths), 560)
    assert log.off_device() == []
    assert log.host_to_device() == 3 + 2


def test_whisper_log_mel_is_device_clean(clips):
    log_mel(clips[0][:16000], 128, device="meta")  # builds the cached filters and window
    with DeviceLog() as log:
        mel = log_mel(clips[2], 128, device="meta")
    assert mel.device.type == "meta" and mel.shape == (128, len(clips[2]) // 160)
    assert log.off_device() == [] and log.host_to_device() == 1


# ---- CUDA ------------------------------------------------------------------------------------

@needs_cuda
def test_cuda_fbank_close_to_cpu(clips):
    cpu, cuda = fbank_torch.TorchFbank(), fbank_torch.TorchFbank(device="cuda")
    worst = 0.0
    for audio in clips:
        expected, got = cpu(audio).numpy(), cuda(audio).cpu().numpy()
        assert_fbank_close(got, expected)
        worst = max(worst, float(np.abs(got - expected).max()))
    print(f"\ntorch fbank cuda ({torch.cuda.get_device_name()}) vs cpu: max |diff| = {worst:.2e}")


@needs_cuda
def test_cuda_frontend_close_to_cpu_under_tf32(weights, clips):
    expected, _ = frontend(weights).packed(clips)
    cuda_fe = frontend(weights, device="cuda")
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            got, _ = cuda_fe.packed(clips)
            assert got.device.type == "cuda"
            worst = float((got.cpu() - expected).abs().max())
            print(f"\nLFR+CMVN features cuda (tf32={tf32}) vs cpu: max |diff| = {worst:.2e}")
            assert worst < FBANK_ATOL
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@needs_cuda
def test_cuda_vq02_tokens_identical(settings, clips):
    def codes(device):
        return Vq02Tokenizer(str(settings.paraformer_dir), str(settings.centroids_path), device, 0.0)(clips)

    for expected, got in zip(codes("cpu"), codes("cuda")):
        np.testing.assert_array_equal(got, expected)


@needs_cuda
def test_cuda_whisper_log_mel_equals_cpu(clips):
    for audio in clips[:4]:
        cpu = log_mel(audio, 128)
        cuda = log_mel(audio, 128, device="cuda")
        assert cuda.device.type == "cuda"
        torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=1e-4)
