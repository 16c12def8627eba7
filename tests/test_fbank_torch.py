"""Torch fbank/LFR/CMVN (python_backends.tokenizer.fbank_torch) equals kaldi-native-fbank, gives identical
vq02 tokens, and stays on its device (checked on the `meta` device, where any stray CPU tensor
or read-back fails). CUDA variants skip, with the reason, where no GPU is present."""
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
from python_backends.tokenizer.fbank_frontend import ParaformerFrontend, default_backend, stream_frame_count
from python_backends.tokenizer.paraformer_weights import load_paraformer
from python_backends.tokenizer.resample import resample
from python_backends.settings import TokenizerSettings
from python_backends.tokenizer.vq02 import Vq02Tokenizer
from python_backends.tokenizer.whisper_mel import log_mel

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA is not available on this machine: the GPU "
                                "variant runs only where torch sees a GPU")
# log-fbank values span about -16 … 27. Float32 rounding in either implementation (DC removal
# and pre-emphasis on ×32768 samples, the FFT) moves them: by ~6e-4 at most with the hamming
# window on these clips, up to ~4e-3 in weak low-frequency bins of loud frames with the other
# windows; knf and torch are each about that far from a float64 computation. The mean
# difference is ~6e-6.
FBANK_ATOL = 5e-3
FBANK_MEAN_ATOL = 5e-5
# A bin far below its frame's loudest is under float32's resolution of that frame's FFT: its
# energy moves by about eps·(peak energy), i.e. by eps·exp(peak − value) in the log domain
# (seen: 6e-3 in a bin 17 nats below the peak with the hanning window). Only such bins get more
# than FBANK_ATOL.
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def assert_fbank_close(got: np.ndarray, expected: np.ndarray) -> None:
    peak = expected.max(axis=1, keepdims=True)
    allowed = FBANK_ATOL + FLOAT32_EPS * np.exp(np.minimum(peak - expected, 60.0))
    worst = np.argmax(np.abs(got - expected) - allowed)
    diff = np.abs(got - expected).flat[worst]
    assert diff <= allowed.flat[worst], (f"|diff| {diff:.2e} > {allowed.flat[worst]:.2e} at "
                                         f"{np.unravel_index(worst, got.shape)}")
CLIPS = [(0.3, 1), (1.0, 2), (2.9, 3), (3.84, 4), (7.7, 5), (12.3, 6), (31.0, 7)]


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


def frontends(weights, device="cpu"):
    knf_fe = ParaformerFrontend(weights.cmvn_shift, weights.cmvn_scale, 0.0, backend="knf")
    torch_fe = ParaformerFrontend(weights.cmvn_shift, weights.cmvn_scale, 0.0, device=device,
                                  backend="torch")
    return knf_fe, torch_fe


# ---- fbank ---------------------------------------------------------------------------------

def _fbank_max_diff(clips, device) -> float:
    knf_fe = ParaformerFrontend(np.zeros(560, np.float32), np.ones(560, np.float32), 0.0)
    fbank = fbank_torch.TorchFbank(device=device)
    worst = 0.0
    for audio in clips:
        expected = knf_fe.fbank(audio)
        got = fbank(audio).cpu().numpy()
        assert got.shape == expected.shape == (fbank_torch.num_fbank_frames(len(audio)), 80)
        worst = max(worst, float(np.abs(got - expected).max()))
        assert float(np.abs(got - expected).mean()) < FBANK_MEAN_ATOL
    return worst


def test_fbank_equals_knf(clips):
    worst = _fbank_max_diff(clips, "cpu")
    print(f"\ntorch fbank vs kaldi-native-fbank on {len(clips)} clips (cpu): max |diff| = {worst:.2e}")
    assert worst < FBANK_ATOL


@pytest.mark.parametrize("window", ["hanning", "povey", "rectangular", "blackman"])
def test_other_windows_equal_knf(clips, window):
    zeros, ones = np.zeros(560, np.float32), np.ones(560, np.float32)
    expected = ParaformerFrontend(zeros, ones, 0.0, window, backend="knf").fbank(clips[2])
    got = fbank_torch.TorchFbank(window=window)(clips[2]).numpy()
    assert_fbank_close(got, expected)
    assert float(np.abs(got - expected).mean()) < FBANK_MEAN_ATOL


@pytest.mark.parametrize("samples", [0, 1, 399, 400, 401, 559, 560, 3839, 3840, 3841, 4160, 8319])
def test_edge_lengths_match_knf(samples):
    audio = (0.2 * np.random.default_rng(samples).standard_normal(samples)).astype(np.float32)
    knf_fe = ParaformerFrontend(np.zeros(560, np.float32), np.ones(560, np.float32), 0.0)
    expected = knf_fe.fbank(audio)
    got = fbank_torch.TorchFbank()(audio).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=FBANK_ATOL)


def test_silence_hits_the_log_floor():
    got = fbank_torch.TorchFbank()(np.zeros(1600, np.float32))
    assert torch.all(got == np.log(np.float32(np.finfo(np.float32).eps)))


def test_batch_equals_one_by_one(clips):
    fbank = fbank_torch.TorchFbank(frames_per_pass=500)  # several passes for the long clips
    packed, counts = fbank.packed(clips)
    assert counts == [fbank_torch.num_fbank_frames(len(a)) for a in clips]
    singles = torch.cat([fbank_torch.TorchFbank()(a) for a in clips])
    torch.testing.assert_close(packed, singles, rtol=0, atol=1e-5)


def test_dither_is_seeded_noise(clips):
    plain = fbank_torch.TorchFbank()(clips[1])
    noisy = [fbank_torch.TorchFbank(dither=1.0, generator=torch.Generator().manual_seed(5))(clips[1])
             for _ in range(2)]
    torch.testing.assert_close(noisy[0], noisy[1], rtol=0, atol=0)
    # ±1 (16-bit LSB) noise: invisible in speech, fills the digital silence (log floor -15.9)
    change = (noisy[0] - plain).abs()
    assert 0 < float(change.median()) < 0.01
    assert float(change[plain < -15].min()) > 5


# ---- LFR/CMVN and the frontend ---------------------------------------------------------------

def test_frontend_features_equal_knf(weights, clips):
    knf_fe, torch_fe = frontends(weights)
    expected, lengths = knf_fe.packed(clips)
    got, got_lengths = torch_fe.packed(clips)
    assert got_lengths == lengths == [stream_frame_count(len(a)) for a in clips]
    worst = float((got - expected).abs().max())
    print(f"\nLFR+CMVN features, torch vs knf, {sum(lengths)} rows: max |diff| = {worst:.2e}")
    assert worst < FBANK_ATOL
    for audio, start, n in zip(clips, np.cumsum([0] + lengths[:-1]), lengths):
        np.testing.assert_array_equal(knf_fe(audio), expected[start:start + n].numpy())
        np.testing.assert_array_equal(torch_fe(audio), got[start:start + n].numpy())


def test_frontend_short_and_empty_batches(weights):
    knf_fe, torch_fe = frontends(weights)
    audios = [np.zeros(100, np.float32), np.full(3841, 0.01, np.float32), np.zeros(0, np.float32)]
    for fe in (knf_fe, torch_fe):
        feats, lengths = fe.packed(audios)
        assert lengths == [0, stream_frame_count(3841), 0] and feats.shape == (sum(lengths), 560)
        empty, none = fe.packed([])
        assert empty.shape == (0, 560) and none == []
        assert fe(audios[0]).shape == (0, 560)


def test_backend_choice(weights):
    assert default_backend("cpu") == "knf"
    assert default_backend("cuda") == default_backend(torch.device("cuda:1")) == "torch"
    assert ParaformerFrontend(weights.cmvn_shift, weights.cmvn_scale, 0.0).backend == "knf"
    with pytest.raises(ValueError, match="fbank backend must be one of"):
        ParaformerFrontend(weights.cmvn_shift, weights.cmvn_scale, 0.0, backend="torchaudio")
    with pytest.raises(ValueError, match="unknown fbank window"):
        fbank_torch.TorchFbank(window="kaiser")


def _vq02_codes_both_ways(settings, clips, device):
    """Codes of one tokenizer (encoder on `device`) fed by knf, then by torch features."""
    tokenizer = Vq02Tokenizer(str(settings.paraformer_dir), str(settings.centroids_path), device, 0.0)
    tokenizer.frontend = ParaformerFrontend(tokenizer.frontend.shift, tokenizer.frontend.scale, 0.0,
                                            backend="knf")
    knf_codes = tokenizer(clips)
    tokenizer.frontend = ParaformerFrontend(tokenizer.frontend.shift, tokenizer.frontend.scale, 0.0,
                                            device=device, backend="torch")
    return knf_codes, tokenizer(clips)


def test_vq02_tokens_identical_with_torch_features(settings, clips):
    knf_codes, torch_codes = _vq02_codes_both_ways(settings, clips, "cpu")
    for expected, got in zip(knf_codes, torch_codes):
        np.testing.assert_array_equal(got, expected)
    print(f"\nvq02 tokens, torch vs knf features (cpu): {sum(map(len, knf_codes))} codes, all identical")


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
    _, meta_fe = frontends(weights, device="meta")
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
def test_cuda_fbank_equals_knf(clips):
    worst = _fbank_max_diff(clips, "cuda")
    print(f"\ntorch fbank vs kaldi-native-fbank (cuda, {torch.cuda.get_device_name()}): "
          f"max |diff| = {worst:.2e}")
    assert worst < FBANK_ATOL


@needs_cuda
def test_cuda_frontend_equals_knf_under_tf32(weights, clips):
    knf_fe, cuda_fe = frontends(weights, device="cuda")
    expected, _ = knf_fe.packed(clips)
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            got, _ = cuda_fe.packed(clips)
            assert got.device.type == "cuda"
            worst = float((got.cpu() - expected).abs().max())
            print(f"\nLFR+CMVN features cuda (tf32={tf32}) vs knf: max |diff| = {worst:.2e}")
            assert worst < FBANK_ATOL
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@needs_cuda
def test_cuda_vq02_tokens_identical(settings, clips):
    knf_codes, cuda_codes = _vq02_codes_both_ways(settings, clips, "cuda")
    for expected, got in zip(knf_codes, cuda_codes):
        np.testing.assert_array_equal(got, expected)


@needs_cuda
def test_cuda_whisper_log_mel_equals_cpu(clips):
    for audio in clips[:4]:
        cpu = log_mel(audio, 128)
        cuda = log_mel(audio, 128, device="cuda")
        assert cuda.device.type == "cuda"
        torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=1e-4)
