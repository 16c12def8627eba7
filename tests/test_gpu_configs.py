"""`build_repository --device gpu` configurations, parsed as Triton's ModelConfig protobuf:
KIND_GPU Python models with their device ids, the engine models as TensorRT plans (or ONNX
Runtime with the TensorRT provider), profiles consistent with max_batch_size, refusals of
plans that cannot serve this repository; and the BLS engine client against a stand-in of
the Python backend's utilities. CPU repositories keep their configs (no engine models)."""
from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from build_scripts import build_repository as br
from build_scripts import build_tensorrt as bt
from python_backends.errors import RequestCancelled
from python_backends.serving import engine_client
from python_backends.engines import metadata as em
from python_backends.engines import profiles as ep
from test_tensorrt_build import H100, fake_tensorrt, write_vq02_like_onnx

KIND_GPU = model_config_pb2.ModelInstanceGroup.KIND_GPU
KIND_CPU = model_config_pb2.ModelInstanceGroup.KIND_CPU
MB = 8  # max_batch_size of the repositories built here
SECONDS = 60.0


def _config(repo: Path, model: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse((repo / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _io(config) -> dict[str, tuple]:
    out = {}
    for t in list(config.input) + list(config.output):
        out[t.name] = (model_config_pb2.DataType.Name(t.data_type), list(t.dims),
                       list(t.reshape.shape) if t.HasField("reshape") else None)
    return out


def on(env: em.Environment):
    return lambda index: env


@pytest.fixture(scope="module")
def engines(tmp_path_factory, tiny_weights) -> dict[str, Path]:
    """vq02-like ONNX, and fp16 plans of it and of the tiny speech tokenizer "built" on an H100
    by the stand-in TensorRT for MB × SECONDS."""
    d = tmp_path_factory.mktemp("engines")
    vq02_onnx = write_vq02_like_onnx(d / "vq02_encoder.onnx")
    vq06_onnx = tiny_weights / "speech_tokenizer_v1.onnx"
    for name, source in (("vq02", vq02_onnx), ("vq06", vq06_onnx)):
        bt.build_plan(source, d / f"{name}.plan", "fp16", MB, SECONDS, trt=fake_tensorrt(), env=H100)
    return {"vq02_onnx": vq02_onnx, "vq06_onnx": vq06_onnx,
            "vq02_plan": d / "vq02.plan", "vq06_plan": d / "vq06.plan"}


def tensorrt_options(engines, **kw) -> br.RepositoryOptions:
    base = dict(device="gpu", gpus=(1, 3), max_batch_size=MB, max_audio_seconds=SECONDS,
                gpu_engine="tensorrt", vq02_engine=str(engines["vq02_plan"]),
                vq06_engine=str(engines["vq06_plan"]),
                instances=br.parse_instances("vq02=2,vq06_encoder=2"))
    base.update(kw)
    return br.RepositoryOptions(**base)


# ---- TensorRT engines ----------------------------------------------------------------------

def test_tensorrt_repository(tmp_path, tiny_weights, engines):
    repo = br.build(tiny_weights, tmp_path / "repo", tensorrt_options(engines), probe=on(H100))
    assert sorted(p.name for p in repo.iterdir()) == sorted(br.MODELS + br.TOKENIZER_ENGINES)

    groups = {m: [(g.count, g.kind, list(g.gpus)) for g in _config(repo, m).instance_group]
              for m in br.MODELS[:-1] + br.TOKENIZER_ENGINES}
    assert groups == {"preprocess": [(1, KIND_CPU, [])], "token_merge": [(1, KIND_CPU, [])],
                      "vq02": [(2, KIND_GPU, [1, 3])], "vq06": [(1, KIND_GPU, [1, 3])],
                      "vq02_encoder": [(1, KIND_GPU, [1, 3])], "vq06_encoder": [(2, KIND_GPU, [1, 3])]}
    for python_model, engine in (("vq02", "vq02_encoder"), ("vq06", "vq06_encoder")):
        config = _config(repo, python_model)
        assert config.backend == "python"
        assert config.parameters["engine_model"].string_value == engine
        assert set(config.parameters) == {"tokenizer_settings", "engine_model"}

    vq02 = _config(repo, "vq02_encoder")
    assert vq02.platform == "tensorrt_plan" and vq02.backend == ""
    assert vq02.max_batch_size == 0 and not vq02.HasField("dynamic_batching")
    assert _io(vq02) == {
        "feats": ("TYPE_FP32", [-1, 560], None), "pos_enc": ("TYPE_FP32", [-1, 560], None),
        "window_src": ("TYPE_INT32", [-1, 9], None), "window_valid": ("TYPE_BOOL", [-1, 9], None),
        "window_prev": ("TYPE_INT32", [-1, 4], None), "key_mask": ("TYPE_BOOL", [-1, 25], None),
        "out_rows": ("TYPE_INT32", [-1], None),
        "codes": ("TYPE_INT32", [-1], None), "enc": ("TYPE_FP32", [-1, 8], None)}

    vq06 = _config(repo, "vq06_encoder")
    assert vq06.platform == "tensorrt_plan"
    assert vq06.max_batch_size == MB * 2  # 60 s = two 30 s pieces per utterance
    assert vq06.HasField("dynamic_batching")
    assert vq06.dynamic_batching.max_queue_delay_microseconds == 0
    assert _io(vq06) == {"feats": ("TYPE_FP32", [128, -1], None),
                         "feats_length": ("TYPE_INT32", [1], []),
                         "indices": ("TYPE_INT64", [1, -1], None)}
    assert not vq06.HasField("optimization")

    for engine in br.TOKENIZER_ENGINES:
        version = repo / engine / "1"
        assert sorted(p.name for p in version.iterdir()) == ["model.plan", "model.plan.json"]
        source = engines["vq02_plan" if engine == "vq02_encoder" else "vq06_plan"]
        assert (version / "model.plan").read_bytes() == source.read_bytes()
        assert em.check_plan(version / "model.plan", H100).kind == engine


def test_profiles_are_consistent_with_max_batch_size(tmp_path, tiny_weights, engines):
    repo = br.build(tiny_weights, tmp_path / "repo", tensorrt_options(engines), probe=on(H100))
    vq06 = em.read_metadata(repo / "vq06_encoder" / "1" / "model.plan")
    assert ep.batch_axis_max(vq06.kind, vq06.inputs, vq06.profiles) >= _config(repo, "vq06_encoder").max_batch_size
    assert vq06.profiles["feats"].max[2] == 3000 and vq06.profiles["feats"].min[2] <= 3
    vq02 = em.read_metadata(repo / "vq02_encoder" / "1" / "model.plan")
    python_mb = _config(repo, "vq02").max_batch_size
    need = ep.derive_limits(ep.VQ02, python_mb, SECONDS)
    assert vq02.profiles["feats"].max[0] >= need["frames"][2] == python_mb * ep.vq02_frames(SECONDS)
    assert vq02.profiles["window_src"].max[0] >= need["windows"][2]
    assert vq02.profiles["out_rows"].max[0] >= need["rows"][2]


def test_plan_too_small_for_the_repository_is_refused(tmp_path, tiny_weights, engines):
    options = tensorrt_options(engines, max_batch_size=2 * MB)
    with pytest.raises(br.BuildError) as caught:
        br.build(tiny_weights, tmp_path / "repo", options, probe=on(H100))
    message = str(caught.value)
    assert message.startswith(f"plan {engines['vq02_plan']} (built for max batch size {MB}, 60 s) "
                              "is too small for this repository: input 'feats' axis 0 (frames) allows at most")
    assert "--fp16 --max-batch-size 16 --max-audio-seconds 60`" in message
    with pytest.raises(br.BuildError, match="too small"):
        br.build(tiny_weights, tmp_path / "repo", tensorrt_options(engines, max_audio_seconds=90),
                 probe=on(H100))
    assert not (tmp_path / "repo").exists()


def test_plan_for_another_gpu_or_tensorrt_is_refused(tmp_path, tiny_weights, engines):
    l20 = em.Environment("NVIDIA L20", "8.9", "10.8.0.43")
    with pytest.raises(br.BuildError) as caught:
        br.build(tiny_weights, tmp_path / "repo", tensorrt_options(engines), probe=on(l20))
    assert str(caught.value).startswith(f"GPU 1: refusing TensorRT plan {engines['vq02_plan']}")
    assert "built for the GPU 'NVIDIA H100 80GB HBM3', this is 'NVIDIA L20'" in str(caught.value)
    newer = em.Environment(H100.gpu_name, "9.0", "10.9.0.34")
    with pytest.raises(br.BuildError, match="built with TensorRT 10.8.0.43, this is TensorRT 10.9.0.34"):
        br.build(tiny_weights, tmp_path / "repo", tensorrt_options(engines), probe=on(newer))
    # one bad GPU among several is enough
    mixed = {1: H100, 3: l20}
    with pytest.raises(br.BuildError, match="^GPU 3: "):
        br.build(tiny_weights, tmp_path / "repo", tensorrt_options(engines), probe=mixed.__getitem__)
    # skip: only the profile checks
    br.build(tiny_weights, tmp_path / "repo", tensorrt_options(engines, plan_check="skip"), probe=on(l20))


def test_plan_check_without_a_gpu(tmp_path, tiny_weights, engines, caplog):
    nothing = em.Environment(None, None, None)
    with caplog.at_level(logging.WARNING, logger="build_repository"):
        br.build(tiny_weights, tmp_path / "repo", tensorrt_options(engines), probe=on(nothing))
    assert "no GPU visible here: plan" in caplog.text and "NVIDIA H100 80GB HBM3" in caplog.text
    with pytest.raises(br.BuildError, match="no GPU is visible here"):
        br.build(tiny_weights, tmp_path / "repo2", tensorrt_options(engines, plan_check="require"),
                 probe=on(nothing))


def test_wrong_or_missing_engine_files(tmp_path, tiny_weights, engines):
    swapped = tensorrt_options(engines, vq02_engine=str(engines["vq06_plan"]))
    with pytest.raises(br.BuildError, match="was built for vq06_encoder, not vq02_encoder"):
        br.build(tiny_weights, tmp_path / "repo", swapped, probe=on(H100))
    with pytest.raises(br.BuildError, match="^--gpu-engine tensorrt needs --vq06-engine: TensorRT plans"):
        br.build(tiny_weights, tmp_path / "repo", tensorrt_options(engines, vq06_engine=None),
                 probe=on(H100))
    with pytest.raises(br.BuildError, match="has no metadata file"):
        br.build(tiny_weights, tmp_path / "repo",
                 tensorrt_options(engines, vq02_engine=str(engines["vq02_onnx"])), probe=on(H100))
    with pytest.raises(br.BuildError, match="--gpu-engine tensorrt needs --device gpu"):
        br.build(tiny_weights, tmp_path / "repo", tensorrt_options(engines, device="cpu"))
    with pytest.raises(br.BuildError, match="--instances for vq06_encoder needs --gpu-engine"):
        br.build(tiny_weights, tmp_path / "repo", tensorrt_options(engines, gpu_engine="none"))


def test_rebuild_is_idempotent_and_dropping_engines_removes_them(tmp_path, tiny_weights, engines):
    repo = br.build(tiny_weights, tmp_path / "repo", tensorrt_options(engines), probe=on(H100))
    (repo / "other_model").mkdir()
    stamps = {p: p.stat().st_mtime_ns for p in repo.rglob("*") if p.is_file()}
    br.build(tiny_weights, repo, tensorrt_options(engines), probe=on(H100))
    assert {p: p.stat().st_mtime_ns for p in repo.rglob("*") if p.is_file()} == stamps
    br.build(tiny_weights, repo, br.RepositoryOptions(device="gpu", gpus=(1, 3)))
    assert sorted(p.name for p in repo.iterdir()) == sorted(br.MODELS + ("other_model",))
    assert set(_config(repo, "vq02").parameters) == {"tokenizer_settings"}
    assert [(g.kind, list(g.gpus)) for g in _config(repo, "vq02").instance_group] == [(KIND_GPU, [1, 3])]


# ---- ONNX Runtime engines ------------------------------------------------------------------

def test_onnxruntime_repository(tmp_path, tiny_weights, engines):
    options = br.RepositoryOptions(device="gpu", gpus=(0,), max_batch_size=MB, max_audio_seconds=SECONDS,
                                   gpu_engine="onnxruntime", vq02_engine=str(engines["vq02_onnx"]),
                                   ort_precision="FP16")
    repo = br.build(tiny_weights, tmp_path / "repo", options)
    for engine in br.TOKENIZER_ENGINES:
        config = _config(repo, engine)
        assert config.backend == "onnxruntime" and config.platform == ""
        assert [(g.kind, list(g.gpus)) for g in config.instance_group] == [(KIND_GPU, [0])]
        assert [p.name for p in (repo / engine / "1").iterdir()] == ["model.onnx"]
        (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert accelerator.name == "tensorrt"
        assert accelerator.parameters["precision_mode"] == "FP16"
    vq06 = _config(repo, "vq06_encoder")
    assert vq06.max_batch_size == 2 * MB
    params = vq06.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters
    assert params["trt_profile_max_shapes"] == f"feats:{2 * MB}x128x3000,feats_length:{2 * MB}"
    assert params["trt_profile_min_shapes"] == "feats:1x128x3,feats_length:1"
    vq02 = _config(repo, "vq02_encoder")
    params = vq02.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters
    frames = MB * ep.vq02_frames(SECONDS)
    assert f"feats:{frames}x560" in params["trt_profile_max_shapes"]
    assert (repo / "vq06_encoder" / "1" / "model.onnx").read_bytes() == engines["vq06_onnx"].read_bytes()
    # the CUDA provider alone: no TensorRT parameters
    cuda = br.build(tiny_weights, tmp_path / "cuda", br.RepositoryOptions(
        device="gpu", gpu_engine="onnxruntime", vq02_engine=str(engines["vq02_onnx"]),
        ort_accelerator="cuda"))
    (accelerator,) = _config(cuda, "vq02_encoder").optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "cuda" and dict(accelerator.parameters) == {}


def test_onnxruntime_engine_of_the_wrong_graph_is_refused(tmp_path, tiny_weights, engines):
    options = br.RepositoryOptions(device="gpu", gpu_engine="onnxruntime",
                                   vq02_engine=str(engines["vq06_onnx"]))
    with pytest.raises(br.BuildError, match="is a vq06_encoder graph, not vq02_encoder"):
        br.build(tiny_weights, tmp_path / "repo", options)


def test_cli_builds_a_tensorrt_repository(tmp_path, tiny_weights, engines, capsys):
    # this machine has no GPU: plan-check skip (auto would only warn)
    rc = br.main(["--weights", str(tiny_weights), "--out", str(tmp_path / "repo"), "--device", "gpu",
                  "--gpus", "0", "--max-batch-size", str(MB), "--max-audio-seconds", str(SECONDS),
                  "--gpu-engine", "tensorrt", "--vq02-engine", str(engines["vq02_plan"]),
                  "--vq06-engine", str(engines["vq06_plan"]), "--plan-check", "skip"])
    assert rc == 0 and capsys.readouterr().out == f"{tmp_path / 'repo'}\n"
    assert _config(tmp_path / "repo", "vq02_encoder").platform == "tensorrt_plan"
    rc = br.main(["--weights", str(tiny_weights), "--out", str(tmp_path / "repo"), "--device", "gpu",
                  "--gpu-engine", "tensorrt"])
    assert rc == 2 and "needs --vq02-engine and --vq06-engine" in capsys.readouterr().err


# ---- CPU repositories stay as they were ----------------------------------------------------

def test_cpu_repository_has_no_engines(tmp_path, tiny_weights):
    repo = br.build(tiny_weights, tmp_path / "repo")
    assert sorted(p.name for p in repo.iterdir()) == sorted(br.MODELS)
    for model in ("vq02", "vq06"):
        config = _config(repo, model)
        assert config.backend == "python" and "engine_model" not in config.parameters
        assert [(g.kind, list(g.gpus)) for g in config.instance_group] == [(KIND_CPU, [])]
        assert (repo / model / "config.pbtxt").read_text().endswith("}\n")


# ---- the BLS engine client -----------------------------------------------------------------

class FakePb:
    """Stand-in for triton_python_backend_utils: records requests, answers from `reply`."""

    responses = 1  # how many responses a decoupled exec yields

    def __init__(self, reply=None, error=None):
        self.requests, self.reply, self.error = [], reply or {}, error

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, array

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

        def is_cpu(self):
            return True

        @classmethod
        def from_dlpack(cls, name, capsule):
            raise AssertionError("no CUDA tensors in this test")

    def InferenceRequest(self, model_name, requested_output_names, inputs, request_id=""):
        pb = self
        request = types.SimpleNamespace(model_name=model_name, outputs=requested_output_names,
                                        inputs={t.name(): t.as_numpy() for t in inputs},
                                        request_id=request_id)

        def execute(decoupled=False):
            pb.requests.append(request)
            error = pb.error
            response = types.SimpleNamespace(
                has_error=lambda: error is not None,
                error=lambda: types.SimpleNamespace(message=lambda: error),
                outputs={k: pb.Tensor(k, v) for k, v in pb.reply.items()})
            return iter([response] * pb.responses) if decoupled else response

        request.exec = execute
        return request

    @staticmethod
    def get_output_tensor_by_name(response, name):
        return response.outputs.get(name)


def model_args(repo: Path, model: str, device_id: int = 0) -> dict:
    config = json.loads(json.dumps({"parameters": {
        k: {"string_value": v.string_value} for k, v in _config(repo, model).parameters.items()}}))
    return {"model_config": json.dumps(config), "model_repository": str(repo / model),
            "model_instance_kind": "GPU", "model_instance_device_id": str(device_id)}


def test_engine_client_sends_bls_requests():
    import torch

    reply = {"codes": np.arange(5, dtype=np.int32)}
    pb = FakePb(reply)
    client = engine_client.EngineClient("vq02_encoder", pb)
    feats = torch.ones(3, 560)
    out = client.infer({"feats": feats, "out_rows": np.arange(5, dtype=np.int32)}, ["codes"])
    (request,) = pb.requests
    assert request.model_name == "vq02_encoder" and request.outputs == ["codes"]
    assert request.inputs["feats"].shape == (3, 560) and request.inputs["feats"].dtype == np.float32
    np.testing.assert_array_equal(out["codes"], reply["codes"])
    out["codes"][0] = 99  # a copy: the response's memory is not kept
    assert reply["codes"][0] == 0
    with pytest.raises(engine_client.EngineError, match="returned no output 'enc'"):
        client.infer({"feats": feats}, ["enc"])
    failing = engine_client.EngineClient("vq06_encoder", FakePb(error="shape [1,128,4000] exceeds profile"))
    with pytest.raises(engine_client.EngineError,
                       match=r"model 'vq06_encoder' failed: shape \[1,128,4000\] exceeds profile"):
        failing.infer({"feats": np.zeros((1, 128, 4000), np.float32)}, ["indices"])


def test_a_cancelled_stream_asks_the_model_to_stop_it_and_reads_it_to_its_end():
    """2.51's BLS has no cancel: the stop is a `cancel` request naming the stream's request id,
    and the stream's remaining responses are read."""
    pb = FakePb({"output_ids": np.arange(3, dtype=np.int32)})
    pb.responses = 4
    client = engine_client.EngineClient("llm_stream", pb)
    checks = iter([False, True])
    got = []
    with pytest.raises(RequestCancelled):
        for out in client.stream({"input_ids": np.ones((1, 5), np.int32)}, ["output_ids"],
                                 cancelled=lambda: next(checks)):
            got.append(out)
    assert len(got) == 1
    generation, stop = pb.requests
    assert generation.request_id and generation.request_id == stop.inputs["cancel"][0, 0].decode()
    assert stop.model_name == "llm_stream" and stop.outputs == []


def test_engine_client_from_model_args_checks_the_plan(tmp_path, tiny_weights, engines):
    repo = br.build(tiny_weights, tmp_path / "repo", tensorrt_options(engines), probe=on(H100))
    pb = FakePb()
    client = engine_client.from_model_args(model_args(repo, "vq02", 3), pb, env=H100)
    assert client.model_name == "vq02_encoder"
    with pytest.raises(em.PlanMismatch, match="this is 'NVIDIA L20'"):
        engine_client.from_model_args(model_args(repo, "vq06", 1), pb,
                                      env=em.Environment("NVIDIA L20", "8.9", "10.8.0.43"))
    cpu = br.build(tiny_weights, tmp_path / "cpu")
    assert engine_client.from_model_args(model_args(cpu, "vq02"), pb) is None
    onnx_repo = br.build(tiny_weights, tmp_path / "ort", br.RepositoryOptions(
        device="gpu", gpu_engine="onnxruntime", vq02_engine=str(engines["vq02_onnx"])))
    assert engine_client.from_model_args(model_args(onnx_repo, "vq06"), pb).model_name == "vq06_encoder"
    (repo / "vq02_encoder" / "1" / "model.plan").unlink()
    with pytest.raises(em.PlanMismatch, match="holds neither model.plan nor model.onnx"):
        engine_client.from_model_args(model_args(repo, "vq02"), pb, env=H100)
