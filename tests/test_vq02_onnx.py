"""The exported vq02 encoder + k-means ONNX (build_scripts/export_vq02_onnx.py) on tiny weights:
its tokens equal the original algorithm's, its I/O contract and metadata, idempotence, and the
"onnx" engine of Vq02Tokenizer. No server involved."""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from build_scripts import export_vq02_onnx as exporter
from build_scripts.espeak_clips import speech_of_duration
from build_scripts.make_synthetic_weights import build
from python_backends.tokenizer.chunk_encoder import GRAPH_INPUTS, GRAPH_OUTPUTS, window_plan
from python_backends.file_io import sha256_file
from python_backends.onnx_runtime import onnx_session
from python_backends.tokenizer.reference.vq02 import ReferenceVq02
from python_backends.tokenizer.resample import resample
from python_backends.settings import CENTROIDS_FILE, PARAFORMER_DIR, TokenizerSettings
from python_backends.file_io import onnx_sidecar_path as metadata_path
from python_backends.tokenizer.vq02 import Vq02Tokenizer, default_onnx_path, weights_digest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights() -> Path:
    return build("tiny", ROOT / "build" / "weights" / "tiny")


@pytest.fixture(scope="module")
def exported(weights, tmp_path_factory) -> Path:
    return exporter.export(weights, tmp_path_factory.mktemp("engines") / "vq02_encoder.onnx")


@pytest.fixture(scope="module")
def ref(weights):
    return ReferenceVq02(weights / PARAFORMER_DIR, weights / CENTROIDS_FILE)


@pytest.fixture(scope="module")
def onnx_tok(weights, exported):
    return Vq02Tokenizer(str(weights / PARAFORMER_DIR), str(weights / CENTROIDS_FILE),
                         engine="onnx", onnx_path=str(exported))


@pytest.fixture(scope="module")
def torch_tok(weights):
    return Vq02Tokenizer(str(weights / PARAFORMER_DIR), str(weights / CENTROIDS_FILE))


def clip16k(seconds: float, seed: int) -> np.ndarray:
    audio, rate = speech_of_duration(seconds, seed=seed)
    return resample(audio, rate, 16000)


# ---- tokens ------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_samples", [
    2000, 3000, 4320, 3840 + 300, 3840 * 3 + 400, 3840 * 3 + 700, 3840 * 7 + 1279, 16000 * 5 + 11,
    16000 * 31])
def test_onnx_tokens_equal_reference(onnx_tok, ref, num_samples):
    audio = clip16k(num_samples / 16000 + 0.1, seed=num_samples % 7)[:num_samples]
    codes = onnx_tok([audio])[0]
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(codes, ref(audio))


def test_onnx_batch_equals_reference(onnx_tok, ref):
    audios = [clip16k(s, seed=i) for i, s in enumerate([0.3, 1.0, 0.2, 2.9, 3.84, 7.7, 12.3])]
    batched = onnx_tok(audios)
    assert len(batched) == len(audios)
    for audio, codes in zip(audios, batched):
        np.testing.assert_array_equal(codes, ref(audio))
    assert len(np.unique(np.concatenate(batched))) > 20


def test_engine_onnx_equals_torch(onnx_tok, torch_tok):
    audios = [clip16k(s, seed=30 + i) for i, s in enumerate([0.25, 4.4, 9.9, 1.3])]
    for a, b in zip(onnx_tok(audios), torch_tok(audios)):
        np.testing.assert_array_equal(a, b)
    assert onnx_tok([]) == [] and torch_tok([]) == []


def test_session_runs_raw_plan_and_enc_matches_torch(exported, torch_tok):
    """The graph as a client drives it: numpy plan in, codes + encoder output out."""
    rng = np.random.default_rng(5)
    lengths = [1, 4, 5, 9, 40]
    feats = rng.standard_normal((sum(lengths), 560)).astype(np.float32)
    inputs = torch_tok.model.graph_inputs(torch.from_numpy(feats), lengths)
    codes, enc = onnx_session(str(exported)).run(None, {k: v.numpy() for k, v in inputs.items()})
    want_codes, want_enc = torch_tok.model.encode(torch.from_numpy(feats), lengths)
    assert codes.shape == (sum(lengths),) and enc.shape == (sum(lengths), torch_tok.model.d)
    np.testing.assert_array_equal(codes, want_codes.numpy())
    np.testing.assert_allclose(enc, want_enc.numpy(), atol=1e-4, rtol=0)
    plan = window_plan(lengths)
    assert set(plan) | {"feats", "pos_enc"} == set(GRAPH_INPUTS)


# ---- the file ----------------------------------------------------------------------------------

def test_io_contract(exported):
    graph = onnx.load(str(exported), load_external_data=False).graph

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    def dtype(value):
        return onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)

    inputs = {v.name: (dtype(v), dims(v)) for v in graph.input}
    outputs = {v.name: (dtype(v), dims(v)) for v in graph.output}
    assert [v.name for v in graph.input] == list(GRAPH_INPUTS)
    assert [v.name for v in graph.output] == list(GRAPH_OUTPUTS)
    assert inputs == {
        "feats": (np.float32, ["frames", 560]), "pos_enc": (np.float32, ["frames", 560]),
        "window_src": (np.int32, ["windows", 9]), "window_valid": (np.bool_, ["windows", 9]),
        "window_prev": (np.int32, ["windows", 4]), "key_mask": (np.bool_, ["windows", 25]),
        "out_rows": (np.int32, ["rows"])}
    assert outputs == {"codes": (np.int32, ["rows"]), "enc": (np.float32, ["rows", 64])}


def test_metadata(weights, exported):
    meta = json.loads(metadata_path(exported).read_text())
    digest, per_file = weights_digest(weights / PARAFORMER_DIR, weights / CENTROIDS_FILE)
    assert meta["weights"]["sha256"] == digest
    assert meta["weights"]["files"] == per_file
    assert set(per_file) == {"model.pt", "config.yaml", "am.mvn", "linguistic_tokenizer.npy"}
    assert meta["opset"] == 17 and meta["torch"] == torch.__version__ and meta["onnx"] == onnx.__version__
    assert [i["name"] for i in meta["inputs"]] == list(GRAPH_INPUTS)
    assert meta["outputs"][0] == {"name": "codes", "dtype": "int32", "shape": ["rows"]}
    assert meta["dynamic_axes"]["feats"] == "frames" and meta["dynamic_axes"]["key_mask"] == "windows"
    assert meta["onnx_file"]["bytes"] == exported.stat().st_size
    assert meta["onnx_file"]["sha256"] == sha256_file(exported)
    check = meta["check"]
    assert check["passed"] and len(check["cases"]) >= 5
    assert all(c["tokens_identical"] for c in check["cases"])
    assert any(c["utterances"] > 1 for c in check["cases"])
    assert default_onnx_path(digest).name == f"vq02_encoder.{digest[:12]}.onnx"
    assert not list(exported.parent.glob(".*tmp*"))


def test_reexport_skipped_when_up_to_date_and_forced_otherwise(weights, exported, tmp_path):
    stamp = exported.stat().st_mtime_ns, metadata_path(exported).stat().st_mtime_ns
    t0 = time.perf_counter()
    assert exporter.export(weights, exported) == exported
    assert time.perf_counter() - t0 < 1.0
    assert (exported.stat().st_mtime_ns, metadata_path(exported).stat().st_mtime_ns) == stamp
    # a copy with metadata naming other weights is not up to date, and is refused by the engine
    other = tmp_path / "other.onnx"
    shutil.copy(exported, other)
    meta = json.loads(metadata_path(exported).read_text())
    meta["weights"]["sha256"] = "0" * 64
    metadata_path(other).write_text(json.dumps(meta))
    assert not exporter.is_up_to_date(other, "0" * 63 + "1", 17)
    with pytest.raises(ValueError, match="re-export"):
        Vq02Tokenizer(str(weights / PARAFORMER_DIR), str(weights / CENTROIDS_FILE), engine="onnx",
                      onnx_path=str(other))
    exporter.export(weights, other)  # stale metadata → exported again
    assert json.loads(metadata_path(other).read_text())["weights"]["sha256"] != "0" * 64
    stamp = other.stat().st_mtime_ns
    exporter.export(weights, other, force=True)
    assert other.stat().st_mtime_ns != stamp


def test_nothing_written_when_tokens_differ(weights, tmp_path, monkeypatch):
    real_checks = exporter.run_checks

    def checks_on_other_centroids(model, onnx_file, cases):
        model.centroids.mul_(-1.0)  # the graph keeps the exported centroids; torch now differs
        return real_checks(model, onnx_file, cases)

    monkeypatch.setattr(exporter, "run_checks", checks_on_other_centroids)
    out = tmp_path / "bad.onnx"
    with pytest.raises(exporter.ExportCheckFailed, match="tokens differ"):
        exporter.export(weights, out)
    assert [p.name for p in tmp_path.iterdir()] == [".bad.onnx.lock"]


def test_settings_select_the_engine(weights, exported):
    settings = TokenizerSettings(weights_dir=str(weights), vq02_engine="onnx", vq02_onnx=str(exported))
    assert TokenizerSettings.from_json(settings.to_json()) == settings
    assert TokenizerSettings(weights_dir="w").vq02_engine == "torch"
    tok = Vq02Tokenizer.from_settings(settings)
    assert tok.engine == "onnx" and tok.model is None and tok.onnx_path == exported
    tok = Vq02Tokenizer.from_settings(dataclasses.replace(settings, vq02_engine="torch"))
    assert tok.engine == "torch" and tok.model is not None
    with pytest.raises(ValueError, match="engine"):
        Vq02Tokenizer.from_settings(dataclasses.replace(settings, vq02_engine="tensorrt"))
    with pytest.raises(FileNotFoundError, match="export_vq02_onnx"):
        Vq02Tokenizer.from_settings(dataclasses.replace(settings, vq02_onnx=str(exported) + ".missing"))


def test_engine_fields_round_trip_through_json():
    default = TokenizerSettings(weights_dir="w")
    assert json.loads(default.to_json())["vq02_engine"] == "torch"
    assert TokenizerSettings.from_json(default.to_json()) == default
    chosen = TokenizerSettings(weights_dir="w", vq02_engine="onnx", vq02_onnx="e.onnx")
    assert TokenizerSettings.from_json(chosen.to_json()) == chosen


class FakeEngineModel:
    """Stands in for the engine model a BLS request reaches: runs the same graph in torch."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def infer(self, inputs, outputs):
        self.calls.append(sorted(inputs))
        tensors = [torch.as_tensor(inputs[name]) for name in GRAPH_INPUTS]
        with torch.inference_mode():
            codes, _ = self.model(*tensors)
        return {"codes": codes.numpy()}


def test_engine_client_runs_the_graph_in_the_engine_model(weights):
    settings = TokenizerSettings(weights_dir=str(weights))
    local = Vq02Tokenizer.from_settings(settings)
    engine = FakeEngineModel(local.model)
    remote = Vq02Tokenizer.from_settings(settings, engine_client=engine)
    assert remote.engine == "triton" and remote.model is None
    audios = [clip16k(s, seed) for seed, s in enumerate([0.4, 3.3, 7.9])]
    for got, want in zip(remote(audios), local(audios)):
        np.testing.assert_array_equal(got, want)
    assert engine.calls == [sorted(GRAPH_INPUTS)]
    with pytest.raises(ValueError, match="needs the engine model's client"):
        Vq02Tokenizer(str(settings.paraformer_dir), str(settings.centroids_path), engine="triton")
