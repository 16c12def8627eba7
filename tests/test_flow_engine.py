"""The flow estimator's GPU path without a GPU: the checked ONNX export of the DiT (sidecar,
up-to-date skip, refusal), the onnxruntime estimator and token2wav on it against PyTorch, the
refusal of graphs made from other weights, and the TensorRT profile (batch 2 to 2·B for
guidance, time axis from max_length and the prompt) through build_tensorrt with a stand-in
TensorRT."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_tensorrt_build import H100, ROOT, built, fake_tensorrt

from build_scripts import build_tensorrt as bt
from build_scripts import export_flow_onnx as ex
from python_backends.engines import metadata as em
from python_backends.engines import profiles as ep
from python_backends.decoder.estimator_engine import (EngineEstimator, OnnxEstimator,
                                                      checked_onnx_path, estimator_from_settings,
                                                      weights_digest)
from python_backends.onnx_runtime import onnx_session
from python_backends.decoder.flow_dit import DiT
from python_backends.decoder.token2wav import Token2Wav
from python_backends.decoder.token_reshape import reshape_token_ids
from python_backends.file_io import sha256_file
from python_backends.settings import COSYVOICE_DIR, EditxSettings
from python_backends.tokenizer.token_merge import merge_tokens


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def cosyvoice(tiny_editx):
    return tiny_editx / COSYVOICE_DIR


@pytest.fixture(scope="module")
def exported(cosyvoice, tmp_path_factory):
    return ex.export(cosyvoice, tmp_path_factory.mktemp("flow_onnx") / "estimator.onnx")


@pytest.fixture(scope="module")
def estimator(cosyvoice) -> DiT:
    return ex.load_estimator(cosyvoice)


# ------------------------------------------------------------------ export

def test_export_writes_a_checked_graph_and_its_sidecar(cosyvoice, exported):
    meta = json.loads(exported.with_suffix(".json").read_text())
    digest, per_file = weights_digest(cosyvoice)
    assert meta["weights"]["sha256"] == digest and sorted(per_file) == ["cosyvoice.yaml", "flow.pt"]
    assert meta["weights"]["files"]["flow.pt"] == sha256_file(cosyvoice / "flow.pt")
    assert meta["opset"] == 18 and meta["dtype"] == "float32" and meta["model"] == "flow_estimator"
    assert meta["onnx_file"] == {"name": "estimator.onnx", "bytes": exported.stat().st_size,
                                 "sha256": sha256_file(exported)}
    assert meta["inputs"] == [
        {"name": "x", "dtype": "float32", "shape": ["batch", 80, "frames"]},
        {"name": "mask", "dtype": "float32", "shape": ["batch", 1, "frames"]},
        {"name": "mu", "dtype": "float32", "shape": ["batch", 80, "frames"]},
        {"name": "t", "dtype": "float32", "shape": ["batch"]},
        {"name": "spks", "dtype": "float32", "shape": ["batch", 80]},
        {"name": "cond", "dtype": "float32", "shape": ["batch", 80, "frames"]}]
    assert meta["outputs"] == [{"name": "estimator_out", "dtype": "float32",
                                "shape": ["batch", 80, "frames"]}]
    check = meta["check"]
    assert check["passed"] is True and check["max_abs_diff_allowed"] == 1e-4
    assert [c["batch"] for c in check["cases"]] == [2, 2, 4, 6]  # 2 rows per request: guidance
    assert all(0 < c["max_abs_diff"] <= 1e-4 and c["max_abs_value"] > 0.1 for c in check["cases"])
    assert sorted(p.name for p in exported.parent.iterdir()) == [
        ".estimator.onnx.lock", "estimator.json", "estimator.onnx"]


def test_export_is_skipped_when_up_to_date_and_forced_otherwise(cosyvoice, exported):
    stamp = exported.stat().st_mtime_ns, exported.with_suffix(".json").stat().st_mtime_ns
    assert ex.export(cosyvoice, exported) == exported
    assert (exported.stat().st_mtime_ns, exported.with_suffix(".json").stat().st_mtime_ns) == stamp
    assert ex.is_up_to_date(exported, weights_digest(cosyvoice)[0], 18)
    assert not ex.is_up_to_date(exported, weights_digest(cosyvoice)[0], 17)
    assert not ex.is_up_to_date(exported, "0" * 64, 18)


def test_export_refuses_a_graph_past_the_tolerance(cosyvoice, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "MAX_ABS_DIFF", 0.0)  # the real graph differs by ~1e-6
    with pytest.raises(ex.ExportCheckFailed, match=r"differs from PyTorch's by more than 0: batch 2 frames \[2\]"):
        ex.export(cosyvoice, tmp_path / "e.onnx")
    assert [p.name for p in tmp_path.iterdir()] == [".e.onnx.lock"]
    with pytest.raises(ValueError, match="--out must end in .onnx"):
        ex.export(cosyvoice, tmp_path / "e.plan")


def test_export_command_line(cosyvoice, tmp_path):
    out = tmp_path / "cli.onnx"
    args = [sys.executable, "-m", "build_scripts.export_flow_onnx", "--cosyvoice", str(cosyvoice),
            "--out", str(out)]
    first = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(out) and "stage=check batch=6 frames=(120, 13, 77)" in first.stderr
    again = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0 and "stage=skip" in again.stderr and "stage=export" not in again.stderr


# ------------------------------------------------------------------ onnxruntime estimator

@pytest.mark.parametrize("frames", [(2,), (31,), (64, 9), (5, 80, 33, 17)])
def test_onnx_estimator_equals_the_dit(exported, estimator, frames):
    engine = OnnxEstimator(exported)
    args = ex.guidance_inputs(frames, 80, seed=len(frames) + frames[0])
    with torch.inference_mode():
        expected = estimator(*args)
        got = engine(*args)
    assert got.shape == (2 * len(frames), 80, max(frames)) and got.dtype == torch.float32
    assert (got - expected).abs().max() <= 1e-4
    assert list(engine.parameters()) == []


def test_onnx_estimator_returns_the_callers_dtype(exported, estimator):
    args = ex.guidance_inputs((12, 7), 80, seed=3)
    half = [a.to(torch.bfloat16) for a in args]
    got = OnnxEstimator(exported)(*half)
    assert got.dtype == torch.bfloat16 and got.shape == (4, 80, 12)
    with torch.inference_mode():
        expected = estimator(*(h.float() for h in half))  # the graph computes in float32
    assert (got.float() - expected).abs().max() <= 2 ** -7 * expected.abs().max()


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_cuda_without_the_cuda_provider_is_refused(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(RuntimeError, match="onnxruntime has no CUDA provider here"):
        OnnxEstimator(exported, "cuda:0")


# ------------------------------------------------------------------ token2wav on the engine

def audio_ids(groups: int, rng) -> np.ndarray:
    ids = [np.concatenate([rng.integers(0, 1024, 2), 1024 + rng.integers(0, 4096, 3)])
           for _ in range(groups)]
    return 65536 + np.concatenate(ids)


def test_token2wav_on_onnx_equals_torch(tiny_editx, exported):
    torch_decoder = Token2Wav.from_settings(EditxSettings(str(tiny_editx)))
    onnx_decoder = Token2Wav.from_settings(EditxSettings(str(tiny_editx), flow_engine="onnx",
                                                         flow_onnx=str(exported)))
    assert isinstance(onnx_decoder.flow.model.decoder.estimator, OnnxEstimator)
    assert not any(n.startswith("decoder.") for n, _ in onnx_decoder.flow.model.named_parameters())
    rng = np.random.default_rng(8)
    items = [dict(target_ids=audio_ids(groups, rng), prompt_ids=audio_ids(prompt, rng),
                  prompt_mel=rng.standard_normal((frames, 80)).astype(np.float32),
                  speaker_embedding=rng.standard_normal(192).astype(np.float32), seed=seed)
             for groups, prompt, frames, seed in ((6, 4, 25, 1), (2, 7, 41, 2), (9, 3, 19, 3))]
    expected, got = torch_decoder.batch(items), onnx_decoder.batch(items)
    for e, g in zip(expected, got):
        assert g.shape == e.shape and np.abs(e).max() > 0.01
        # the estimators agree to 1e-4 (above); voiced HiFT integrates the flow's last-bit
        # differences into its sine phase (~3e-4 here)
        assert np.abs(g - e).max() <= 3e-3, np.abs(g - e).max()


class SessionEngine:
    """The engine model's side of a BLS call (EngineClient.infer's contract), run by a real
    onnxruntime session over the exported graph; records what it was sent."""

    def __init__(self, path):
        self.session = onnx_session(str(path))
        self.received = []

    def infer(self, inputs, outputs):
        self.received.append({n: (v.dtype, v.is_contiguous()) for n, v in inputs.items()})
        return dict(zip(outputs, self.session.run(list(outputs), {n: v.numpy() for n, v in inputs.items()})))


def test_engine_estimator_sends_the_graph_inputs(exported, estimator):
    engine = SessionEngine(exported)
    args = ex.guidance_inputs((21, 6), 80, seed=4)
    with torch.inference_mode():
        got = EngineEstimator(engine)(*[a.to(torch.float64) for a in args])
        expected = estimator(*args)
    assert engine.received == [{n: (torch.float32, True) for n in ("x", "mask", "mu", "t", "spks", "cond")}]
    assert got.dtype == torch.float64 and (got - expected).abs().max() <= 1e-4


def test_token2wav_on_an_engine_model_equals_torch(tiny_editx, exported):
    engine = SessionEngine(exported)
    decoder = Token2Wav.from_settings(EditxSettings(str(tiny_editx)), engine_client=engine)
    reference = Token2Wav.from_settings(EditxSettings(str(tiny_editx)))
    rng = np.random.default_rng(9)
    item = dict(target_ids=audio_ids(5, rng), prompt_ids=audio_ids(3, rng),
                prompt_mel=rng.standard_normal((18, 80)).astype(np.float32),
                speaker_embedding=rng.standard_normal(192).astype(np.float32), seed=6)
    got, expected = decoder.batch([item])[0], reference.batch([item])[0]
    assert len(engine.received) == 10  # one call per Euler step
    # as test_token2wav_on_onnx_equals_torch: the phase of voiced HiFT grows the estimator's 1e-6
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 3e-3, np.abs(got - expected).max()


def test_graphs_of_other_weights_or_changed_files_are_refused(tiny_editx, exported, tmp_path):
    with pytest.raises(ValueError, match="flow_engine must be one of torch, onnx, not 'tensorrt'"):
        estimator_from_settings(EditxSettings(str(tiny_editx), flow_engine="tensorrt"))
    with pytest.raises(FileNotFoundError, match=r"does not exist; export it with `python -m "
                                                r"build_scripts.export_flow_onnx"):
        checked_onnx_path(tiny_editx / COSYVOICE_DIR, tmp_path / "none.onnx")
    shutil.copytree(exported.parent, tmp_path / "graph")
    graph = tmp_path / "graph" / exported.name
    other = tmp_path / "other"
    other.mkdir()
    cosy = tiny_editx / COSYVOICE_DIR
    shutil.copy(cosy / "cosyvoice.yaml", other / "cosyvoice.yaml")
    state = torch.load(cosy / "flow.pt", weights_only=True)
    state["decoder.estimator.in_proj.bias"] += 1
    torch.save(state, other / "flow.pt")
    with pytest.raises(ValueError, match=r"exported from weights [0-9a-f]{12}, not from the configured"):
        checked_onnx_path(other, graph)
    assert checked_onnx_path(cosy, graph) == graph
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="the file changed after its sidecar was written"):
        checked_onnx_path(cosy, graph)
    graph.with_suffix(".json").unlink()
    with pytest.raises(ValueError, match="its sidecar .* is missing or unreadable"):
        checked_onnx_path(cosy, graph)


# ------------------------------------------------------------------ TensorRT profile

@pytest.mark.parametrize("max_batch_size,opt", [(1, 2), (2, 2), (5, 4), (8, 8), (16, 16)])
def test_flow_batch_is_two_rows_per_request(max_batch_size, opt):
    limits = ep.derive_limits(ep.FLOW, max_batch_size, 30.0)
    assert limits["batch"] == (2, opt, 2 * max_batch_size)
    assert limits["frames"] == (2, 1008, 11334)  # 10 s prompt + 10 s target; 8192 ids + 30 s
    assert ep.derive_limits(ep.FLOW, max_batch_size, 30.0, opt_batch_size=1)["batch"][1] == 2


def test_flow_time_axis_formula():
    assert ep.flow_frames(8192, 30.0) == 2 * (3 * 1639 + 750)
    assert ep.flow_frames(100, 3.0) == 2 * (60 + 75)
    assert ep.flow_frames(101, 0.5) == 2 * (63 + 15)
    assert ep.derive_limits(ep.FLOW, 4, 3.0, max_length=100)["frames"] == (2, 270, 270)  # opt capped
    with pytest.raises(ep.ProfileError, match="max length must be >= 1"):
        ep.derive_limits(ep.FLOW, 4, 3.0, max_length=0)


@pytest.mark.parametrize("ids", [1, 4, 5, 6, 8192])
def test_target_rows_are_what_token2wav_reshapes(ids):
    assert len(reshape_token_ids(np.full(ids, 65536 + 1030))) == ep.flow_rows_of_ids(ids)


@pytest.mark.parametrize("seconds", [0.5, 3.0, 10.0, 30.0])
def test_prompt_rows_bound_the_tokenizers_merge(seconds):
    vq06 = np.zeros(int(np.ceil(25 * seconds)), np.int64)  # 25 Hz
    vq02 = np.zeros(int(np.ceil(50 * seconds / 3)), np.int64)  # 16.7 Hz
    ids, _ = merge_tokens(vq02, vq06)
    rows = len(reshape_token_ids(ids))
    assert rows <= ep.flow_rows_of_seconds(seconds) <= rows + 3


def test_flow_profiles_of_the_exported_graph(exported):
    kind, inputs, outputs, limits, profiles = bt.plan_inputs(exported, "auto", 8, 30.0, None, 10.0, {},
                                                             max_length=1000)
    assert kind == ep.FLOW and [t.name for t in outputs] == ["estimator_out"]
    frames = 2 * (600 + 750)
    for name in ("x", "mu", "cond"):
        assert profiles[name] == ep.Profile((2, 80, 2), (8, 80, 1008), (16, 80, frames))
    assert profiles["mask"] == ep.Profile((2, 1, 2), (8, 1, 1008), (16, 1, frames))
    assert profiles["t"] == ep.Profile((2,), (8,), (16,))
    assert profiles["spks"] == ep.Profile((2, 80), (8, 80), (16, 80))
    assert ep.batch_axis_max(kind, inputs, profiles) == 16
    assert ep.check_profiles_cover(kind, inputs, profiles, ep.derive_limits(kind, 8, 30.0, max_length=1000)) == []
    problems = ep.check_profiles_cover(kind, inputs, profiles, ep.derive_limits(kind, 16, 30.0, max_length=1000))
    assert "input 't' axis 0 (batch) allows at most 16, the repository needs 32" in problems


def test_fp16_flow_plan_pins_norms_and_records_its_limits(exported, tmp_path):
    trt = fake_tensorrt()
    plan = tmp_path / "flow.plan"
    meta = bt.build_plan(exported, plan, "fp16", 4, 30.0, trt=trt, env=H100, max_length=1000)
    got = built(plan)
    assert got["flags"] == ["FP16", "PREFER_PRECISION_CONSTRAINTS"]
    assert got["profiles"][0]["x"] == {"min": [2, 80, 2], "opt": [4, 80, 1008], "max": [8, 80, 2700]}
    assert got["profiles"][0]["t"] == {"min": [2], "opt": [4], "max": [8]}
    pinned = [l.name for l in trt.calls["network"].layers if l.precision == "float32"]
    assert pinned == ["/layers.0/norm", "/after_norm"]  # no k-means tail in the flow
    assert meta.kind == ep.FLOW and meta.extra["fp32_after"] is None and meta.extra["max_length"] == 1000
    assert meta.limits == {"batch": (2, 4, 8), "frames": (2, 1008, 2700)}
    assert em.check_plan(plan, H100) == meta


def test_cli_dry_run_detects_the_flow_estimator(exported, tmp_path):
    done = subprocess.run([sys.executable, "-m", "build_scripts.build_tensorrt", "--onnx", str(exported),
                           "--out", str(tmp_path / "f.plan"), "--max-batch-size", "3",
                           "--max-audio-seconds", "10", "--max-length", "500", "--dry-run"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["kind"] == "flow_estimator"
    assert out["limits"] == {"batch": [2, 2, 6], "frames": [2, 1008, 2 * (300 + 252)]}
