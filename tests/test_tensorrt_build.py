"""build_scripts/build_tensorrt.py without TensorRT: profile derivation, the build flow against a
stand-in `tensorrt` module (flags, profiles, fp32 pins, atomic writes, up-to-date skip), the
metadata sidecar and the refusal of plans built for another GPU or TensorRT version. A real
build runs only where TensorRT and a GPU exist (skipped here, with the reason)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from build_scripts import build_tensorrt as bt
from python_backends.engines import metadata as em
from python_backends.engines import profiles as ep
from python_backends.file_io import sha256_file
from python_backends.tokenizer.fbank_frontend import stream_frame_count

ROOT = Path(__file__).resolve().parents[1]
H100 = em.Environment("NVIDIA H100 80GB HBM3", "9.0", "10.8.0.43")
VQ02_D = 8


def write_vq02_like_onnx(path: Path, d: int = VQ02_D) -> Path:
    """An ONNX file with the vq02 encoder export's interface (export_vq02_onnx.py): inputs
    feats/pos_enc [frames, 560], window_* [windows, ·], out_rows [rows] → codes [rows],
    enc [rows, d]. The body is a stand-in (gathers), only the signature matters here."""
    f, i32, b = TensorProto.FLOAT, TensorProto.INT32, TensorProto.BOOL
    inputs = [helper.make_tensor_value_info("feats", f, ["frames", 560]),
              helper.make_tensor_value_info("pos_enc", f, ["frames", 560]),
              helper.make_tensor_value_info("window_src", i32, ["windows", 9]),
              helper.make_tensor_value_info("window_valid", b, ["windows", 9]),
              helper.make_tensor_value_info("window_prev", i32, ["windows", 4]),
              helper.make_tensor_value_info("key_mask", b, ["windows", 25]),
              helper.make_tensor_value_info("out_rows", i32, ["rows"])]
    outputs = [helper.make_tensor_value_info("codes", i32, ["rows"]),
               helper.make_tensor_value_info("enc", f, ["rows", d])]
    nodes = [helper.make_node("Add", ["feats", "pos_enc"], ["x"]),
             helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["x_d"]),
             helper.make_node("Gather", ["x_d", "out_rows"], ["enc"], axis=0),
             helper.make_node("Identity", ["out_rows"], ["codes"])]
    inits = [helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
             helper.make_tensor("ends", TensorProto.INT64, [1], [d]),
             helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    graph = helper.make_graph(nodes, "vq02_like", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def vq02_onnx(tmp_path_factory) -> Path:
    return write_vq02_like_onnx(tmp_path_factory.mktemp("onnx") / "vq02_encoder.onnx")


@pytest.fixture(scope="module")
def vq06_onnx(tiny_weights) -> Path:
    return tiny_weights / "speech_tokenizer_v1.onnx"


# ---- a stand-in tensorrt module ------------------------------------------------------------

class FakeTensor:
    def __init__(self, name, dtype="float32"):
        self.name, self.dtype = name, dtype


class FakeLayer:
    def __init__(self, name, type_, outputs, dtype="float32"):
        self.name, self.type = name, type_
        self._outputs = [FakeTensor(o, dtype) for o in outputs]
        self.precision = None
        self.output_types = {}

    num_inputs = property(lambda self: 1)
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, i):
        return FakeTensor("in", self._outputs[0].dtype)

    def get_output(self, i):
        return self._outputs[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


class FakeNetwork:
    def __init__(self):
        self.inputs, self.layers = [], []

    num_inputs = property(lambda self: len(self.inputs))
    num_layers = property(lambda self: len(self.layers))

    def get_input(self, i):
        return self.inputs[i]

    def get_layer(self, i):
        return self.layers[i]


def fake_tensorrt(version="10.8.0.43", parse_ok=True, build_ok=True):
    """Records what the build script asks for; the "plan" is a JSON dump of it."""
    trt = types.SimpleNamespace(__version__=version, float32="float32", float16="float16")
    trt.calls = {}
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.LayerType = types.SimpleNamespace(NORMALIZATION="NORMALIZATION", SOFTMAX="SOFTMAX",
                                          MATRIX_MULTIPLY="MATRIX_MULTIPLY", TOPK="TOPK",
                                          ELEMENTWISE="ELEMENTWISE")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", TF32="TF32",
                                            PREFER_PRECISION_CONSTRAINTS="PREFER_PRECISION_CONSTRAINTS")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace()  # TensorRT 10: no EXPLICIT_BATCH

    class Parser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0 if parse_ok else 1

        def get_error(self, i):
            return "In node 3 (Gather): unsupported"

        def parse_from_file(self, path):
            if not parse_ok:
                return False
            inputs, _ = em.onnx_signature(path)
            self.network.inputs = [FakeTensor(t.name) for t in inputs]
            self.network.layers = [FakeLayer("/layers.0/MatMul", "MATRIX_MULTIPLY", ["h"]),
                                   FakeLayer("/layers.0/norm", "NORMALIZATION", ["h2"]),
                                   FakeLayer("/after_norm", "NORMALIZATION", ["enc"]),
                                   FakeLayer("/MatMul_dist", "MATRIX_MULTIPLY", ["dist"]),
                                   FakeLayer("/ArgMin", "TOPK", ["codes"]),
                                   FakeLayer("/Cast", "CAST", ["codes_i32"], dtype="int32")]
            trt.calls["network"] = self.network
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.pools = {"TF32"}, [], {}
            self.builder_optimization_level = 3

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.flags.discard(flag)

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            trt.calls["network_flags"] = flags
            return FakeNetwork()

        def create_builder_config(self):
            trt.calls["config"] = Config()
            return trt.calls["config"]

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            if not build_ok:
                return None
            return json.dumps({"flags": sorted(config.flags),
                               "profiles": [p.shapes for p in config.profiles]}).encode()

    trt.OnnxParser, trt.Builder = Parser, Builder
    return trt


def built(plan: Path) -> dict:
    return json.loads(plan.read_bytes())


# ---- profile derivation --------------------------------------------------------------------

def test_vq02_limits_follow_batch_and_length():
    limits = ep.derive_limits(ep.VQ02, 16, 120.0)
    per_utt = stream_frame_count(120 * 16000)
    assert per_utt == 2000  # 16.7 frames per second
    assert limits["frames"] == (1, 16 * stream_frame_count(160000), 16 * 2000)
    assert limits["windows"] == (1, 16 * 42, 16 * 500)  # 4 new frames per window, ceil
    assert limits["rows"] == limits["frames"]
    small = ep.derive_limits(ep.VQ02, 2, 5.0, opt_batch_size=1, opt_audio_seconds=3.0)
    assert small["frames"] == (1, stream_frame_count(48000), 2 * stream_frame_count(80000))


def test_vq06_limits_count_30s_pieces():
    assert ep.derive_limits(ep.VQ06, 16, 120.0) == {"batch": (1, 16, 64), "frames": (3, 1000, 3000)}
    assert ep.derive_limits(ep.VQ06, 16, 30.0)["batch"] == (1, 16, 16)
    assert ep.derive_limits(ep.VQ06, 8, 31.0)["batch"] == (1, 8, 16)
    assert ep.derive_limits(ep.VQ06, 4, 5.0) == {"batch": (1, 4, 4), "frames": (3, 500, 500)}
    with pytest.raises(ep.ProfileError, match="max batch size"):
        ep.derive_limits(ep.VQ06, 0, 5.0)
    with pytest.raises(ep.ProfileError, match="unknown engine kind"):
        ep.derive_limits("vq03", 1, 5.0)


def test_profiles_of_the_speech_tokenizer(vq06_onnx):
    kind, inputs, _, limits, profiles = bt.plan_inputs(vq06_onnx, None, 16, 120.0, None, 10.0, {})
    assert kind == ep.VQ06
    assert profiles == {"feats": ep.Profile((1, 128, 3), (16, 128, 1000), (64, 128, 3000)),
                        "feats_length": ep.Profile((1,), (16,), (64,))}
    assert ep.batch_axis_max(kind, inputs, profiles) == 64


def test_profiles_of_the_vq02_encoder(vq02_onnx):
    kind, inputs, outputs, limits, profiles = bt.plan_inputs(vq02_onnx, "auto", 16, 120.0, 4, 10.0, {})
    assert kind == ep.VQ02 and ep.batch_axis_max(kind, inputs, profiles) == 0
    frames, windows = limits["frames"], limits["windows"]
    assert profiles["feats"] == profiles["pos_enc"] == ep.Profile(
        (frames[0], 560), (frames[1], 560), (frames[2], 560))
    assert profiles["key_mask"].max == (windows[2], 25)
    assert profiles["window_valid"].opt == (4 * 42, 9)
    assert profiles["out_rows"].max == (32000,)
    assert [t.name for t in outputs] == ["codes", "enc"]
    assert outputs[1] == ep.Tensor("enc", "float32", ("rows", VQ02_D))


def test_vq02_roles_match_the_exporter():
    chunk_encoder = pytest.importorskip("python_backends.tokenizer.chunk_encoder")
    graph_inputs = getattr(chunk_encoder, "GRAPH_INPUTS", None)
    if graph_inputs is None:
        pytest.skip("chunk_encoder has no GRAPH_INPUTS (the ONNX export interface) yet")
    assert set(ep.AXIS_ROLES[ep.VQ02]) == set(graph_inputs)


def test_unknown_dynamic_axis_needs_a_limit(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "mystery"])
    feats_length = helper.make_tensor_value_info("feats_length", TensorProto.INT32, ["batch"])
    feats = helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["batch", 128, "frames"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "mystery"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x, feats, feats_length], [y])
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ep.ProfileError, match=r"input 'x' axis 1 is dynamic \('mystery'\).*--limit mystery="):
        bt.plan_inputs(path, None, 2, 10.0, None, 5.0, {})
    *_, profiles = bt.plan_inputs(path, None, 2, 10.0, None, 5.0, {"mystery": (1, 7, 9)})
    assert profiles["x"] == ep.Profile((1, 1), (2, 7), (2, 9))


def test_parse_limit():
    assert ep.parse_limit("frames=1:2000:32000") == ("frames", (1, 2000, 32000))
    for bad in ("frames", "frames=1:2", "frames=3:2:1", "frames=0:1:2", "=1:1:1", "f=a:b:c"):
        with pytest.raises(ep.ProfileError, match="NAME=MIN:OPT:MAX"):
            ep.parse_limit(bad)


def test_detect_kind():
    with pytest.raises(ep.ProfileError, match="pass --kind"):
        ep.detect_kind([ep.Tensor("input_ids", "int64", ("b", "t"))])


def test_check_profiles_cover(vq02_onnx):
    kind, inputs, _, _, small = bt.plan_inputs(vq02_onnx, None, 4, 30.0, None, 10.0, {})
    assert ep.check_profiles_cover(kind, inputs, small, ep.derive_limits(kind, 4, 30.0)) == []
    problems = ep.check_profiles_cover(kind, inputs, small, ep.derive_limits(kind, 16, 30.0))
    assert "input 'feats' axis 0 (frames) allows at most 2000, the repository needs 8000" in problems
    assert len(problems) == 7  # every input has a too-small axis


# ---- the build flow (stand-in TensorRT) ----------------------------------------------------

def test_fp32_build_writes_plan_and_metadata(tmp_path, vq06_onnx):
    trt = fake_tensorrt()
    plan = tmp_path / "engines" / "vq06.plan"
    meta = bt.build_plan(vq06_onnx, plan, "fp32", 16, 120.0, trt=trt, env=H100)
    got = built(plan)
    assert got["profiles"] == [{"feats": {"min": [1, 128, 3], "opt": [16, 128, 1000], "max": [64, 128, 3000]},
                                "feats_length": {"min": [1], "opt": [16], "max": [64]}}]
    assert got["flags"] == []  # fp32: TF32 cleared, no FP16
    assert trt.calls["network_flags"] == 0
    side = json.loads(em.metadata_path(plan).read_text())
    assert side["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert side["tensorrt_version"] == "10.8.0.43" and side["precision"] == "fp32"
    assert side["onnx"]["sha256"] == sha256_file(vq06_onnx)
    assert side["plan"]["sha256"] == sha256_file(plan) and side["plan"]["bytes"] == plan.stat().st_size
    assert side["profiles"]["feats"]["max"] == [64, 128, 3000]
    assert side["max_batch_size"] == 16 and side["limits"]["batch"] == [1, 16, 64]
    assert em.read_metadata(plan) == meta
    assert em.check_plan(plan, H100) == meta
    assert sorted(p.name for p in plan.parent.iterdir()) == ["vq06.plan", "vq06.plan.json"]


def test_fp16_build_pins_norms_and_the_kmeans_tail(tmp_path, vq02_onnx):
    trt = fake_tensorrt()
    plan = tmp_path / "vq02.plan"
    meta = bt.build_plan(vq02_onnx, plan, "fp16", 8, 60.0, trt=trt, env=H100, workspace_gb=2)
    assert built(plan)["flags"] == ["FP16", "PREFER_PRECISION_CONSTRAINTS"]
    layers = {l.name: l for l in trt.calls["network"].layers}
    assert [n for n, l in layers.items() if l.precision == "float32"] == [
        "/layers.0/norm", "/after_norm", "/MatMul_dist", "/ArgMin"]
    assert layers["/layers.0/MatMul"].precision is None and layers["/Cast"].precision is None
    assert trt.calls["config"].pools == {"WORKSPACE": 2 << 30}
    assert meta.precision == "fp16" and meta.extra["fp32_after"] == "enc" and meta.extra["fp32_layers"] == 4
    assert meta.profiles["feats"].max == (8 * stream_frame_count(60 * 16000), 560)


def test_tf32_is_opt_in(tmp_path, vq06_onnx):
    trt = fake_tensorrt()
    bt.build_plan(vq06_onnx, tmp_path / "a.plan", "fp32", 2, 10.0, trt=trt, env=H100, tf32=True)
    assert built(tmp_path / "a.plan")["flags"] == ["TF32"]


def test_up_to_date_plan_is_kept_and_changes_rebuild(tmp_path, vq06_onnx):
    plan = tmp_path / "vq06.plan"
    bt.build_plan(vq06_onnx, plan, "fp32", 4, 30.0, trt=fake_tensorrt(), env=H100)
    stamp = plan.stat().st_mtime_ns, em.metadata_path(plan).stat().st_mtime_ns
    bt.build_plan(vq06_onnx, plan, "fp32", 4, 30.0, trt=fake_tensorrt(), env=H100)
    assert (plan.stat().st_mtime_ns, em.metadata_path(plan).stat().st_mtime_ns) == stamp
    assert bt.build_plan(vq06_onnx, plan, "fp16", 4, 30.0, trt=fake_tensorrt(), env=H100).precision == "fp16"
    meta = bt.build_plan(vq06_onnx, plan, "fp16", 8, 30.0, trt=fake_tensorrt(), env=H100)
    assert meta.profiles["feats"].max[0] == 8
    other_trt = fake_tensorrt(version="10.9.0.34")
    assert bt.build_plan(vq06_onnx, plan, "fp16", 8, 30.0, trt=other_trt, env=H100).tensorrt_version == "10.9.0.34"
    stamp = plan.stat().st_mtime_ns
    bt.build_plan(vq06_onnx, plan, "fp16", 8, 30.0, trt=other_trt, env=H100, force=True)
    assert plan.stat().st_mtime_ns != stamp


def test_failed_builds_leave_nothing(tmp_path, vq06_onnx):
    plan = tmp_path / "vq06.plan"
    with pytest.raises(bt.BuildFailed, match=r"could not parse .*In node 3 \(Gather\): unsupported"):
        bt.build_plan(vq06_onnx, plan, "fp32", 4, 30.0, trt=fake_tensorrt(parse_ok=False), env=H100)
    with pytest.raises(bt.BuildFailed, match="failed to build"):
        bt.build_plan(vq06_onnx, plan, "fp32", 4, 30.0, trt=fake_tensorrt(build_ok=False), env=H100)
    assert list(tmp_path.iterdir()) == []


def test_build_needs_a_gpu(tmp_path, vq06_onnx):
    with pytest.raises(bt.ToolMissing, match="no CUDA GPU is visible"):
        bt.build_plan(vq06_onnx, tmp_path / "p.plan", "fp32", 4, 30.0, trt=fake_tensorrt(),
                      env=em.Environment(None, None, None))


# ---- refusing plans built elsewhere --------------------------------------------------------

@pytest.fixture()
def h100_plan(tmp_path, vq06_onnx) -> Path:
    plan = tmp_path / "model.plan"
    bt.build_plan(vq06_onnx, plan, "fp16", 4, 30.0, trt=fake_tensorrt(), env=H100)
    return plan


@pytest.mark.parametrize("env,needles", [
    (dataclasses.replace(H100, gpu_name="NVIDIA L20"),
     ["built for the GPU 'NVIDIA H100 80GB HBM3', this is 'NVIDIA L20'"]),
    (em.Environment("NVIDIA A100-SXM4-80GB", "8.0", "10.8.0.43"),
     ["built for the GPU 'NVIDIA H100 80GB HBM3', this is 'NVIDIA A100-SXM4-80GB'",
      "built for compute capability 9.0, this GPU has 8.0"]),
    (dataclasses.replace(H100, tensorrt_version="10.9.0.34"),
     ["built with TensorRT 10.8.0.43, this is TensorRT 10.9.0.34"]),
    (dataclasses.replace(H100, tensorrt_version="8.6.1"), ["built with TensorRT 10.8.0.43, this is TensorRT 8.6.1"]),
    (em.Environment(None, None, "10.8.0.43"), ["no GPU is visible here"]),
    (dataclasses.replace(H100, tensorrt_version=None), ["TensorRT is not found here"]),
])
def test_plan_for_another_gpu_or_tensorrt_is_refused(h100_plan, env, needles):
    with pytest.raises(em.PlanMismatch) as caught:
        em.check_plan(h100_plan, env)
    message = str(caught.value)
    assert message.startswith(f"refusing TensorRT plan {h100_plan} (vq06_encoder, fp16): ")
    for needle in needles:
        assert needle in message
    assert "rebuild it on this machine with `python -m build_scripts.build_tensorrt" in message


def test_same_release_other_build_number_is_accepted(h100_plan):
    # getInferLibVersion() reports major.minor.patch only
    assert em.check_plan(h100_plan, dataclasses.replace(H100, tensorrt_version="10.8.0")).gpu_name == H100.gpu_name


def test_changed_or_unlabelled_plans_are_refused(h100_plan):
    h100_plan.write_bytes(h100_plan.read_bytes() + b"\0")
    with pytest.raises(em.PlanMismatch, match="the plan file changed after its metadata was written"):
        em.check_plan(h100_plan, H100)
    em.check_plan(h100_plan, H100, verify_bytes=False)
    em.metadata_path(h100_plan).write_text("{not json")
    with pytest.raises(em.PlanMismatch, match="is not valid JSON"):
        em.check_plan(h100_plan, H100)
    em.metadata_path(h100_plan).write_text(json.dumps({"format": 1, "kind": "vq06_encoder"}))
    with pytest.raises(em.PlanMismatch, match="incomplete or of another format"):
        em.check_plan(h100_plan, H100)
    em.metadata_path(h100_plan).unlink()
    with pytest.raises(em.PlanMismatch, match="has no metadata file .* GPU and TensorRT version are unknown"):
        em.check_plan(h100_plan, H100)
    with pytest.raises(em.PlanMismatch, match="does not exist"):
        em.check_plan(h100_plan.with_name("none.plan"), H100)


def test_infer_lib_version_decoding():
    assert em._decode_infer_lib_version(100800) == "10.8.0"
    assert em._decode_infer_lib_version(101300) == "10.13.0"
    assert em._decode_infer_lib_version(8601) == "8.6.1"
    assert em.version_tuple("10.8.0.43") == (10, 8, 0) and em.version_tuple("x.y") is None


def test_probe_finds_no_gpu_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the probe reports it (checked in the CUDA test)")
    env = em.probe_environment(0)
    print(f"\nprobed environment: {env}")
    assert env.gpu_name is None


# ---- command line --------------------------------------------------------------------------

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "build_scripts.build_tensorrt", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_cli_dry_run_prints_profiles(vq06_onnx, tmp_path):
    done = _cli("--onnx", vq06_onnx, "--out", tmp_path / "x.plan", "--max-batch-size", 8,
                "--max-audio-seconds", 60, "--dry-run")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["kind"] == "vq06_encoder" and out["profiles"]["feats"]["max"] == [16, 128, 3000]
    assert not (tmp_path / "x.plan").exists()


def test_cli_errors(vq06_onnx, tmp_path):
    done = _cli("--onnx", vq06_onnx, "--out", tmp_path / "x.plan", "--max-batch-size", 8,
                "--limit", "frames=9:1:1")
    assert done.returncode == 2 and "NAME=MIN:OPT:MAX" in done.stderr
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        done = _cli("--onnx", vq06_onnx, "--out", tmp_path / "x.plan", "--max-batch-size", 8, "--fp16")
        assert done.returncode == 3
        assert done.stderr.startswith("build_tensorrt: error: TensorRT is not installed")
        assert not (tmp_path / "x.plan").exists()


# ---- real TensorRT (GPU machines only) -----------------------------------------------------

def test_real_tensorrt_build_of_the_speech_tokenizer(tmp_path, vq06_onnx):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available: a real TensorRT build needs a GPU")
    pytest.importorskip("tensorrt", reason="the tensorrt Python package is not installed")
    plan = tmp_path / "vq06.plan"
    meta = bt.build_plan(vq06_onnx, plan, "fp32", 2, 31.0)
    env = em.probe_environment(0)
    assert meta.gpu_name == env.gpu_name == torch.cuda.get_device_name(0)
    assert em.check_plan(plan) == meta
    print(f"\nreal TensorRT {meta.tensorrt_version} plan on {meta.gpu_name}: {plan.stat().st_size} bytes")
    assert np.isfinite(meta.plan_bytes)
