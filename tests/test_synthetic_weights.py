"""The synthetic weights generator (tiny preset): layout, loaders, ONNX contract, code variety,
determinism. The tiny weights are cached under build/ and rebuilt only when the generator's
code changes (its manifest fingerprint)."""
from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from build_scripts import espeak_clips

REPO = Path(__file__).resolve().parents[1]
from build_scripts.make_synthetic_weights import (  # noqa: E402
    FILES, MANIFEST, WeightsDirInUse, build, read_manifest)
from build_scripts.synthetic import speech_tokenizer_onnx as s3  # noqa: E402
from build_scripts.synthetic.presets import PRESETS  # noqa: E402
from python_backends.settings import CENTROIDS_FILE, PARAFORMER_DIR, SPEECH_TOKENIZER_FILE  # noqa: E402

TINY_DIR = REPO / "build" / "weights" / "tiny"  # the same cache tests/conftest.py builds


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def speech_16k(seconds: float, seed: int) -> np.ndarray:
    import soxr

    audio, rate = espeak_clips.speech_of_duration(seconds, seed)
    return np.asarray(soxr.resample(audio, rate, 16000), dtype=np.float32)


@pytest.fixture(scope="module")
def tiny() -> Path:
    return build("tiny", TINY_DIR, seed=0)


@pytest.fixture(scope="module")
def session(tiny):
    import onnxruntime as ort

    return ort.InferenceSession(str(tiny / SPEECH_TOKENIZER_FILE), providers=["CPUExecutionProvider"])


def run_vq06(session, mel: np.ndarray) -> np.ndarray:
    out = session.run(None, {"feats": mel[None].astype(np.float32),
                             "feats_length": np.array([mel.shape[1]], np.int32)})[0]
    return out[0, 0]


# ---------------------------------------------------------------- espeak clips
def test_speech_of_duration_is_exact_and_deterministic():
    a, rate = espeak_clips.speech_of_duration(2.5, seed=7)
    b, _ = espeak_clips.speech_of_duration(2.5, seed=7)
    c, _ = espeak_clips.speech_of_duration(2.5, seed=8)
    assert a.dtype == np.float32 and a.ndim == 1 and len(a) == round(2.5 * rate)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.1 < np.abs(a).max() <= 1.0


def test_missing_espeak_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(espeak_clips, "ESPEAK", "espeak-ng-not-installed")
    with pytest.raises(espeak_clips.EspeakNotFound, match="apt-get install espeak-ng"):
        espeak_clips.synthesize("a sentence nobody asked for before", voice="en")


# ---------------------------------------------------------------- layout and loaders
def test_layout_and_manifest(tiny):
    manifest = read_manifest(tiny)
    assert manifest["preset"] == "tiny" and manifest["seed"] == 0
    assert sorted(manifest["files"]) == sorted(FILES)
    for name, meta in manifest["files"].items():
        assert sha256(tiny / name) == meta["sha256"], name
    centroids = np.load(tiny / CENTROIDS_FILE)
    assert centroids.dtype == np.float32
    assert centroids.shape == (1024, PRESETS["tiny"].paraformer.output_size)


def test_funasr_automodel_loads_every_tensor(tiny):
    from funasr import AutoModel

    model_dir = tiny / PARAFORMER_DIR
    auto = AutoModel(model=str(model_dir), device="cpu", disable_update=True, disable_pbar=True,
                     log_level="ERROR")
    file_state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    loaded = auto.model.state_dict()
    assert set(loaded) == set(file_state)  # no missing or unexpected keys
    mismatched = [k for k in file_state if not torch.equal(loaded[k], file_state[k])]
    assert mismatched == []  # AutoModel silently keeps random init on shape mismatches
    assert any(k.startswith("encoder.") for k in file_state)
    assert auto.kwargs["frontend_conf"]["dither"] == 0.0


def test_am_mvn_normalises_speech_features(tiny):
    from python_backends.tokenizer.fbank_frontend import ParaformerFrontend
    from python_backends.tokenizer.paraformer_weights import load_paraformer

    w = load_paraformer(tiny / PARAFORMER_DIR)
    assert np.array_equal(w.cmvn_shift[:80], w.cmvn_shift[80:160])  # 80-bin stats tiled ×7
    feats = ParaformerFrontend(w.cmvn_shift, w.cmvn_scale, w.dither)(speech_16k(5.0, 0))
    assert abs(float(feats.mean())) < 0.5
    assert 0.5 < float(feats.std()) < 2.0


# ---------------------------------------------------------------- ONNX contract
def test_onnx_interface(tiny):
    import onnx

    model = onnx.load(str(tiny / SPEECH_TOKENIZER_FILE))
    TP = onnx.TensorProto

    def sig(values):
        return [(v.name, v.type.tensor_type.elem_type,
                 [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]

    assert sig(model.graph.input) == [("feats", TP.FLOAT, ["batch", 128, "frames"]),
                                      ("feats_length", TP.INT32, ["batch"])]
    assert sig(model.graph.output) == [("indices", TP.INT64, ["batch", 1, "tokens"])]
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    d = PRESETS["tiny"].speech_tokenizer.n_state
    assert inits["encoders.conv1.weight"] == (d, 128, 3)
    assert inits["encoders.positional_embedding"] == (1500, d)
    names = {n.name for n in model.graph.node}
    assert "/blocks.0/attn/key/MatMul" in names and "/blocks.0/attn/key/Add" not in names
    assert "/blocks.1/mlp/mlp.2/MatMul" in names
    pow_1 = next(n for n in model.graph.node if n.name == "/quantizer/rq/model/layers.0/_codebook/Pow_1")
    assert inits[pow_1.input[0]] == (d, 4096)  # codebook stored transposed, as in the real file


@pytest.mark.parametrize("frames", [3000, 2999, 1, 2, 4, 5, 8, 9, 101])
def test_onnx_token_count_is_25_hz(session, frames):
    mel = np.random.default_rng(frames).standard_normal((128, frames)).astype(np.float32)
    codes = run_vq06(session, mel)
    assert len(codes) == math.ceil(math.ceil(frames / 2) / 2)
    assert codes.min() >= 0 and codes.max() < 4096
    if frames == 3000:
        assert len(codes) == 750


def test_padded_batch_equals_one_by_one(session):
    mels = [s3.whisper_log_mel(speech_16k(sec, seed)).numpy()
            for seed, sec in enumerate([0.33, 1.7, 4.01, 2.2, 0.07])]
    singles = [run_vq06(session, m) for m in mels]
    T = max(m.shape[1] for m in mels)
    batch = np.full((len(mels), 128, T), 3.0, np.float32)  # junk in the padding on purpose
    for i, m in enumerate(mels):
        batch[i, :, : m.shape[1]] = m
    out = session.run(None, {"feats": batch,
                             "feats_length": np.array([m.shape[1] for m in mels], np.int32)})[0]
    assert out.shape == (len(mels), 1, math.ceil(math.ceil(T / 2) / 2))
    for i, single in enumerate(singles):
        np.testing.assert_array_equal(out[i, 0, : len(single)], single)


def test_codes_are_varied_on_held_out_speech(tiny, session):
    from python_backends.tokenizer.chunk_encoder import ChunkedEncoderQuantizer
    from python_backends.tokenizer.fbank_frontend import ParaformerFrontend
    from python_backends.tokenizer.paraformer_weights import load_paraformer

    w = load_paraformer(tiny / PARAFORMER_DIR)
    fe = ParaformerFrontend(w.cmvn_shift, w.cmvn_scale, w.dither)
    enc = ChunkedEncoderQuantizer(w.encoder_conf, 560, np.load(tiny / CENTROIDS_FILE))
    enc.load_encoder_state(w.encoder_state)
    for seed in (0, 1, 2):
        audio = speech_16k(5.0, seed)
        feats = fe(audio)
        vq02, _ = enc.encode(torch.from_numpy(feats), [len(feats)])
        vq06 = run_vq06(session, s3.whisper_log_mel(audio).numpy())
        assert len(set(vq02.tolist())) >= 20, seed
        assert len(set(vq06.tolist())) >= 20, seed


# ---------------------------------------------------------------- determinism and idempotence
def test_same_seed_gives_same_bytes_and_rebuild_is_skipped(tiny, tmp_path):
    other = build("tiny", tmp_path / "w", seed=0)
    for name in (CENTROIDS_FILE, SPEECH_TOKENIZER_FILE, f"{PARAFORMER_DIR}/model.pt",
                 f"{PARAFORMER_DIR}/am.mvn"):
        assert sha256(other / name) == sha256(tiny / name), name
    stamp = (other / MANIFEST).stat().st_mtime_ns
    t0 = time.perf_counter()
    build("tiny", other, seed=0)
    assert time.perf_counter() - t0 < 2.0
    assert (other / MANIFEST).stat().st_mtime_ns == stamp


def test_foreign_weights_are_not_overwritten(tmp_path):
    (tmp_path / SPEECH_TOKENIZER_FILE).write_bytes(b"real weights, say")
    with pytest.raises(WeightsDirInUse):
        build("tiny", tmp_path, seed=0)
    assert (tmp_path / SPEECH_TOKENIZER_FILE).read_bytes() == b"real weights, say"


# ---------------------------------------------------------------- real-layout check
def test_s3tokenizer_loads_the_onnx_and_agrees(tiny):
    """s3tokenizer's own ONNX→torch converter keys on the real file's names; run it in a child
    process because importing it needs a stub torchaudio module."""
    cfg = PRESETS["tiny"].speech_tokenizer
    code = textwrap.dedent(f"""
        import sys, types
        try:
            import torchaudio  # noqa: F401
        except Exception:
            sys.modules["torchaudio"] = types.ModuleType("torchaudio")
        try:
            import s3tokenizer
            from s3tokenizer.model import ModelConfig, S3Tokenizer
        except ImportError:
            print("SKIP"); raise SystemExit(0)
        import numpy as np, onnxruntime as ort, soxr, torch
        from build_scripts.espeak_clips import speech_of_duration
        from build_scripts.synthetic.speech_tokenizer_onnx import whisper_log_mel
        path = {str(tiny / SPEECH_TOKENIZER_FILE)!r}
        tok = S3Tokenizer("speech_tokenizer_v1_25hz", ModelConfig(
            n_mels=128, n_audio_state={cfg.n_state}, n_audio_head={cfg.n_head},
            n_audio_layer={cfg.n_layer}, n_codebook_size={cfg.n_codes})).eval()
        tok.init_from_onnx(path)  # strict load_state_dict inside
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        for seed, sec in [(3, 1.3), (4, 6.0)]:
            audio, rate = speech_of_duration(sec, seed)
            audio = torch.from_numpy(soxr.resample(audio, rate, 16000).astype(np.float32))
            mel = whisper_log_mel(audio)
            assert torch.equal(mel, s3tokenizer.log_mel_spectrogram(audio, n_mels=128))
            codes, n = tok.quantize(mel[None], torch.tensor([mel.shape[1]]))
            ort_codes = sess.run(None, {{"feats": mel[None].numpy(),
                                         "feats_length": np.array([mel.shape[1]], np.int32)}})[0]
            assert np.array_equal(codes[0, : int(n[0])].numpy(), ort_codes.ravel()), seed
        print("OK")
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if proc.stdout.strip().endswith("SKIP"):
        pytest.skip("s3tokenizer is not installed")
    assert proc.stdout.strip().endswith("OK"), proc.stdout[-2000:]
