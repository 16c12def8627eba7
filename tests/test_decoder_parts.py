"""The decoder's non-flow parts on tiny synthetic weights: token reshape (exact), prompt mel and
speaker embedding (against plain/independent computations), HiFT (lengths, seeding, batching,
checkpoint loading). No server involved."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from build_scripts.espeak_clips import speech_of_duration
from build_scripts.synthetic import campplus_onnx
from build_scripts.synthetic.hift_checkpoint import hift_yaml_section, random_state_dict, write_hift
from python_backends.decoder.hift import hift_inference, load_hift, reference_hift
from python_backends.decoder.prompt_mel import (PromptMel, mel_filterbank, prompt_mel,
                                                prompt_mel_reference)
from python_backends.decoder.speaker_embedding import SpeakerEmbedder, speaker_features
from python_backends.decoder.token_reshape import (codes_from_token_ids, reshape_mixed_codes,
                                                   reshape_token_ids)
from python_backends.errors import InvalidInput
from python_backends.tokenizer.reference import kaldi_fbank
from python_backends.tokenizer.resample import resample
from python_backends.tokenizer.token_merge import merge_tokens


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def prompt(seconds: float, seed: int) -> tuple[np.ndarray, int]:
    """espeak speech peak-capped at 0.6 like EditX's prompt (22050 Hz)."""
    audio, rate = speech_of_duration(seconds, seed=seed)
    return (audio * (0.6 / np.abs(audio).max())).astype(np.float32), rate


# ---- token reshape ----------------------------------------------------------------------------

@pytest.mark.parametrize("codes,rows", [
    ([], np.zeros((0, 2))),
    ([1, 2, 1030, 1031, 1032], [[1, 1031], [2, 1032], [1024, 1033]]),
    ([7], [[7, 1025], [0, 1025], [1024, 1025]]),  # len % 5 = 1: pad 0, 1024, 1024, 1024
    ([7, 8], [[7, 1025], [8, 1025], [1024, 1025]]),  # 2: pad 1024 × 3
    ([7, 8, 1500], [[7, 1501], [8, 1025], [1024, 1025]]),  # 3: pad 1024 × 2
    ([7, 8, 1500, 2000], [[7, 1501], [8, 2001], [1024, 1025]]),  # 4: pad 1024
    ([1, 2, 1030, 1031, 1032, 9], [[1, 1031], [2, 1032], [1024, 1033],
                                   [9, 1025], [0, 1025], [1024, 1025]]),
    ([0, 1023, 1024, 5119, 3000, 5, 6, 1100, 1200, 1300],
     [[0, 1025], [1023, 5120], [1024, 3001], [5, 1101], [6, 1201], [1024, 1301]]),
])
def test_reshape_hand_computed(codes, rows):
    for given in (list(codes), np.asarray(codes, np.int64)):
        out = reshape_mixed_codes(given)
        assert out.dtype == np.int64 and out.shape == (len(rows), 2)
        np.testing.assert_array_equal(out, np.asarray(rows, np.int64).reshape(-1, 2))


def test_reshape_keeps_input_and_non_audio_ids():
    codes = [3, 4, 1100]
    reshape_mixed_codes(codes)
    assert codes == [3, 4, 1100]  # upstream pads the caller's list in place; we do not
    ids = [65536 + 5, 65536 + 6, 65536 + 1030, 65536 + 1031, 3]  # last: <|EOT|> (id 3)
    np.testing.assert_array_equal(codes_from_token_ids(ids), [5, 6, 1030, 1031, 3 - 65536])
    np.testing.assert_array_equal(reshape_token_ids(ids),
                                  [[5, 1031], [6, 1032], [1024, 3 - 65536 + 1]])


def test_reshape_of_merged_prompt_ids_aligns_vq02_and_vq06():
    rng = np.random.default_rng(0)
    vq02, vq06 = rng.integers(0, 1024, 14), rng.integers(0, 4096, 21)
    ids, _ = merge_tokens(vq02, vq06)
    rows = reshape_token_ids(ids)
    assert rows.shape == (21, 2)
    np.testing.assert_array_equal(rows[:, 1], vq06 + 1025)
    vq02_column = np.insert(vq02.reshape(7, 2), 2, 1024, axis=1).reshape(-1)
    np.testing.assert_array_equal(rows[:, 0], vq02_column)


# ---- prompt mel -------------------------------------------------------------------------------

def test_prompt_mel_equals_plain_reference_at_50_hz():
    audio, rate = prompt(3.0, seed=1)
    mel = prompt_mel(audio, rate, bf16_round=False)
    ref = prompt_mel_reference(audio, rate)
    assert mel.dtype == np.float32 and mel.shape == (150, 80)  # 3 s → 72000 samples at 24 kHz
    np.testing.assert_allclose(mel, ref, atol=2e-4, rtol=0)
    assert mel.min() == pytest.approx(np.log(1e-5))  # silence hits the log floor


def test_prompt_mel_filterbank_is_matchas():
    import librosa

    expected = librosa.filters.mel(sr=24000, n_fft=1920, n_mels=80, fmin=0, fmax=8000, htk=False,
                                   norm="slaney")
    np.testing.assert_array_equal(mel_filterbank(), expected.astype(np.float32))


def test_prompt_mel_rounds_through_bf16_by_default():
    audio, rate = prompt(1.0, seed=2)
    exact = prompt_mel(audio, rate, bf16_round=False)
    rounded = prompt_mel(audio, rate)
    np.testing.assert_array_equal(
        rounded, torch.from_numpy(exact).to(torch.bfloat16).float().numpy())
    assert not np.array_equal(rounded, exact)


def test_prompt_mel_batch_equals_each_alone():
    audio, rate = prompt(2.0, seed=3)
    items = [(audio, rate), (resample(audio[:20000], rate, 16000), 16000),
             (resample(audio, rate, 48000), 48000)]
    mel = PromptMel("cpu")
    batch, frames = mel.batch([a for a, _ in items], [r for _, r in items])
    assert frames == [len(resample(a, r, 24000)) // 480 for a, r in items]
    assert batch.shape == (3, max(frames), 80)
    for i, (a, r) in enumerate(items):
        np.testing.assert_array_equal(batch[i, :frames[i]].numpy(), mel(a, r))
        assert not batch[i, frames[i]:].any()


def test_prompt_mel_refuses_too_short_audio():
    with pytest.raises(InvalidInput, match=r"input 'waveform': has 700 samples at 24 kHz; "
                                           r"allowed: more than 720"):
        prompt_mel(np.zeros(700, np.float32), 24000)


# ---- speaker embedding ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def campplus_path(tmp_path_factory):
    return campplus_onnx.write_campplus(tmp_path_factory.mktemp("campplus"), "tiny", seed=0)


def test_campplus_file_has_the_real_interface(campplus_path):
    session = ort.InferenceSession(str(campplus_path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape, inp.type) == ("input", ["batch", "frames", 80], "tensor(float)")
    assert out.shape == ["batch", 192]
    assert 6.5e6 < campplus_onnx.parameter_count("full") < 7.5e6


def test_speaker_embedding_equals_onnx_on_independent_fbank(campplus_path):
    audio, rate = prompt(2.5, seed=4)
    emb = SpeakerEmbedder(campplus_path, num_threads=1, bf16_round=False)(audio, rate)
    assert emb.shape == (192,) and emb.dtype == np.float32
    # CosyVoice's `kaldi.fbank(speech, num_mel_bins=80, dither=0, sample_frequency=16000)` and
    # mean removal, through the oracle's plain torchaudio transcription: identical
    speech = torch.from_numpy(resample(audio, rate, 16000)).unsqueeze(0)
    fbank = kaldi_fbank.fbank(speech, num_mel_bins=80, dither=0, sample_frequency=16000)
    feats = (fbank - fbank.mean(dim=0, keepdim=True)).numpy()
    np.testing.assert_array_equal(speaker_features(audio, rate), feats)
    session = ort.InferenceSession(str(campplus_path), providers=["CPUExecutionProvider"])
    direct = session.run(None, {"input": feats[None]})[0][0]
    np.testing.assert_allclose(emb, direct, atol=1e-4, rtol=1e-3)
    rounded = SpeakerEmbedder(campplus_path, num_threads=1)(audio, rate)
    np.testing.assert_array_equal(rounded, torch.from_numpy(emb).to(torch.bfloat16).float().numpy())


def test_speaker_embedding_batch_equals_each_alone(campplus_path):
    audio, rate = prompt(2.0, seed=5)
    other, other_rate = prompt(1.2, seed=6)
    embedder = SpeakerEmbedder(campplus_path, num_threads=1)
    audios, rates = [audio, resample(other, other_rate, 16000), audio[:30000]], [rate, 16000, rate]
    batch = embedder.batch(audios, rates)
    assert batch.shape == (3, 192) and batch.dtype == np.float32
    for i, (a, r) in enumerate(zip(audios, rates)):
        np.testing.assert_array_equal(batch[i], embedder(a, r))
    assert np.abs(batch[0] - batch[1]).max() > 1e-3


def test_speaker_embedding_refuses_audio_shorter_than_a_frame(campplus_path):
    with pytest.raises(InvalidInput, match="input 'waveform': has 399 samples at 16 kHz"):
        SpeakerEmbedder(campplus_path)(np.zeros(399, np.float32), 16000)


# ---- HiFT -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hift_file(tmp_path_factory):
    return write_hift(tmp_path_factory.mktemp("hift"), "tiny", seed=0)[0]


@pytest.fixture(scope="module")
def hift(hift_file):
    return load_hift(hift_file, hift_yaml_section("tiny"))


def mels(lengths: list[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(lengths), 80, max(lengths), generator=g) * 2.0 - 5.0


def test_hift_length_and_seeding(hift):
    mel = mels([23])
    wave, lens = hift_inference(hift, mel, [23], [7])
    assert wave.dtype == torch.float32 and wave.shape == (1, 23 * 480) and lens == [23 * 480]
    again, _ = hift_inference(hift, mel, [23], [torch.Generator().manual_seed(7)])
    assert torch.equal(wave, again)
    other, _ = hift_inference(hift, mel, [23], [8])
    assert (wave - other).abs().max() > 1e-3
    assert wave.abs().max() <= 0.99
    both, _ = hift_inference(hift, mel.repeat(2, 1, 1), [23, 23], [7, 8])  # equal lengths
    torch.testing.assert_close(both, torch.cat([wave, other]), atol=1e-5, rtol=0)


def test_synthetic_hift_is_voiced_on_speech_and_runs_the_sine_branch(hift):
    """On an espeak prompt's mel the synthetic f0 is at speech pitch on most frames and below
    the voiced threshold on a few, so both branches of the source run; the source is no longer
    noise only."""
    audio, rate = prompt(3.0, seed=7)
    mel = torch.from_numpy(prompt_mel(audio, rate, bf16_round=False)).T[None]
    src = hift.m_source
    with torch.no_grad():
        f0 = hift.f0_predictor(mel)
        voiced = float((f0 > src.voiced_threshold).float().mean())
        assert 0.9 < voiced < 1.0 and 50 < float(f0.median()) < 300
        phases, noise = src.draw(3, mel.shape[2])
        sine_and_noise = src(f0, phases, noise)
        noise_only = src(torch.zeros_like(f0), phases, noise)
    assert float((sine_and_noise - noise_only).abs().max()) > 0.05


def test_hift_batch_equals_alone_and_reference(hift):
    assert float((hift.f0_predictor(mels([9])) > hift.m_source.voiced_threshold).float().mean()) > 0.5
    lengths, seeds = [31, 4, 17, 1], [3, 4, 5, 6]
    mel = mels(lengths, seed=1)
    wave, lens = hift_inference(hift, mel, lengths, seeds)
    assert wave.shape == (4, 31 * 480) and lens == [n * 480 for n in lengths]
    for i, n in enumerate(lengths):
        alone, _ = hift_inference(hift, mel[i:i + 1, :, :n], [n], [seeds[i]])
        reference = reference_hift(hift, mel[i, :, :n], seeds[i])
        torch.testing.assert_close(wave[i, :lens[i]], alone[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(wave[i, :lens[i]], reference, atol=1e-4, rtol=0)
        assert not wave[i, lens[i]:].any()


def test_hift_checkpoint_missing_tensor_is_named(hift_file, tmp_path):
    state = torch.load(hift_file, weights_only=True)
    del state["resblocks.4.convs1.1.parametrizations.weight.original1"]
    torch.save(state, tmp_path / "hift.pt")
    with pytest.raises(ValueError, match=r"missing tensors: "
                                         r"resblocks\.4\.convs1\.1\.parametrizations\.weight\.original1$"):
        load_hift(tmp_path / "hift.pt", hift_yaml_section("tiny"))


def test_hift_checkpoint_wrong_shape_and_class_are_refused(hift_file, tmp_path):
    state = torch.load(hift_file, weights_only=True)
    state["conv_pre.bias"] = torch.zeros(5)
    torch.save(state, tmp_path / "hift.pt")
    with pytest.raises(ValueError, match=r"wrong shapes: conv_pre\.bias \(5,\) \(expected \(32,\)\)"):
        load_hift(tmp_path / "hift.pt", hift_yaml_section("tiny"))
    section = hift_yaml_section("tiny") | {"__class__": "cosyvoice.bigvgan.BigVGAN"}
    with pytest.raises(ValueError, match="hift is cosyvoice.bigvgan.BigVGAN, expected a HiFTGenerator"):
        load_hift(hift_file, section)
    with pytest.raises(ValueError, match=r"hift section: .*unexpected keyword argument 'n_fft'"):
        load_hift(hift_file, hift_yaml_section("tiny") | {"n_fft": 16})


def test_hift_loads_legacy_weight_norm_names(hift, hift_file, tmp_path):
    state = torch.load(hift_file, weights_only=True)
    legacy = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
    assert "conv_post.weight_g" in legacy
    torch.save(legacy, tmp_path / "hift.pt")
    model = load_hift(tmp_path / "hift.pt", hift_yaml_section("tiny"))
    mel = mels([6])
    assert torch.equal(hift_inference(model, mel, [6], [1])[0], hift_inference(hift, mel, [6], [1])[0])


def test_full_hift_has_release_size():
    count = sum(t.numel() for t in random_state_dict("full", 0).values())
    assert 20.5e6 < count < 21.5e6
