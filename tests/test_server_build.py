"""build_repository.py (templates → repository) and serve.py (start, ports, failure, stop)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from build_scripts import build_repository as br
from build_scripts.serve import ServerStartError, TritonServer
from conftest import ROOT

PYTHON_MODELS = ("preprocess", "vq02", "vq06", "token_merge")


def _config(repo, model) -> model_config_pb2.ModelConfig:
    return text_format.Parse((repo / model / "config.pbtxt").read_text(),
                             model_config_pb2.ModelConfig())


def _linked_weights(src, dst, skip=()):
    """A weights dir of symlinks to `src`'s files, leaving out `skip` (paths relative to it)."""
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if path.is_file() and str(rel) not in skip:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).symlink_to(path)
    return dst


def test_build_fills_every_config(tmp_path, tiny_weights):
    repo = br.build(tiny_weights, tmp_path / "repo")
    assert sorted(p.name for p in repo.iterdir()) == sorted(br.MODELS)
    for model in PYTHON_MODELS:
        config = _config(repo, model)
        assert config.name == model and config.backend == "python"
        assert config.max_batch_size == 16
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000
        assert [(g.count, g.kind) for g in config.instance_group] == [
            (1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
        assert all(i.allow_ragged_batch for i in config.input if list(i.dims) == [-1])
        settings = json.loads(config.parameters["tokenizer_settings"].string_value)
        assert settings == {"device": "cpu", "dither": None, "max_audio_seconds": 120.0,
                            "max_sample_rate": 192000, "min_sample_rate": 8000,
                            "num_threads": 1, "vq02_engine": "torch", "vq02_onnx": None, "vq02_precision": "fp32",
                            "weights_dir": str(tiny_weights.resolve())}
        assert set(config.parameters) == {"tokenizer_settings"}
        assert ((repo / model / "1" / "model.py").read_bytes()
                == (ROOT / "model_repository" / model / "1" / "model.py").read_bytes())
    ensemble = _config(repo, "audio_tokenizer")
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 16
    assert [(i.name, i.optional) for i in ensemble.input] == [
        ("waveform", False), ("sample_rate", False), ("channels", True)]
    assert [o.name for o in ensemble.output] == ["vq02_codes", "vq06_codes", "merged_ids",
                                                 "token_str"]
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == list(PYTHON_MODELS)
    assert (repo / "audio_tokenizer" / "1").is_dir()


def test_build_is_idempotent(tmp_path, tiny_weights):
    repo = br.build(tiny_weights, tmp_path / "repo")
    stamps = {p: p.stat().st_mtime_ns for p in repo.rglob("*") if p.is_file()}
    br.build(tiny_weights, tmp_path / "repo")
    assert {p: p.stat().st_mtime_ns for p in repo.rglob("*") if p.is_file()} == stamps


def test_gpu_build_places_tokenizers_on_gpus_and_sets_options(tmp_path, tiny_weights):
    options = br.RepositoryOptions(device="gpu", gpus=(0, 1), max_batch_size=8, queue_delay_us=500,
                                   instances=br.parse_instances("vq02=2,preprocess=3"),
                                   max_audio_seconds=60, num_threads=4, dither=0.0)
    repo = br.build(tiny_weights, tmp_path / "repo", options)
    gpu, cpu = model_config_pb2.ModelInstanceGroup.KIND_GPU, model_config_pb2.ModelInstanceGroup.KIND_CPU
    groups = {m: [(g.count, g.kind, list(g.gpus)) for g in _config(repo, m).instance_group]
              for m in PYTHON_MODELS}
    assert groups == {"preprocess": [(3, cpu, [])], "vq02": [(2, gpu, [0, 1])],
                      "vq06": [(1, gpu, [0, 1])], "token_merge": [(1, cpu, [])]}
    vq02 = _config(repo, "vq02")
    assert vq02.max_batch_size == 8 and vq02.dynamic_batching.max_queue_delay_microseconds == 500
    settings = json.loads(vq02.parameters["tokenizer_settings"].string_value)
    assert (settings["max_audio_seconds"], settings["num_threads"], settings["dither"]) == (60.0, 4, 0.0)


def test_missing_weight_file_is_named(tmp_path, tiny_weights):
    weights = _linked_weights(tiny_weights, tmp_path / "weights", skip=("speech_tokenizer_v1.onnx",))
    with pytest.raises(br.BuildError) as caught:
        br.build(weights, tmp_path / "repo")
    assert str(caught.value) == ("weights directory is incomplete; missing: "
                                 f"{weights / 'speech_tokenizer_v1.onnx'} "
                                 "(the vq06 speech tokenizer ONNX)")
    assert not (tmp_path / "repo").exists()


def test_cli_errors(tmp_path, tiny_weights):
    script = ROOT / "build_scripts" / "build_repository.py"
    done = subprocess.run([sys.executable, str(script), "--weights", str(tmp_path / "none"),
                           "--out", str(tmp_path / "repo")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == (f"build_repository: error: weights directory {tmp_path / 'none'} "
                           "does not exist\n")
    done = subprocess.run([sys.executable, str(script), "--weights", str(tiny_weights),
                           "--out", str(tmp_path / "repo"), "--instances", "vq03=2"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "--instances entry 'vq03=2' is not MODEL=N" in done.stderr
    done = subprocess.run([sys.executable, str(script), "--weights", str(tiny_weights),
                           "--out", str(tmp_path / "repo")], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == f"{tmp_path / 'repo'}\n"


def test_startup_failure_shows_the_server_log(tmp_path, tiny_weights):
    weights = _linked_weights(tiny_weights, tmp_path / "weights")
    repo = br.build(weights, tmp_path / "repo")
    (weights / "linguistic_tokenizer.npy").unlink()  # vq02 cannot load now
    with pytest.raises(ServerStartError) as caught:
        TritonServer(repo, address="127.0.0.1", startup_timeout=300).start()
    message = str(caught.value)
    assert message.startswith("tritonserver exited with code 1 during startup; log ")
    assert "failed to load 'vq02'" in message and "linguistic_tokenizer.npy" in message


def test_serve_cli_prints_ports_and_stops_on_sigterm(server_repo):
    proc = subprocess.Popen([sys.executable, str(ROOT / "build_scripts" / "serve.py"),
                             "--repo", str(server_repo), "--address", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ports = json.loads(proc.stdout.readline())
        assert set(ports) == {"http_port", "grpc_port", "metrics_port", "log_file", "shm_prefix"}
        assert len({ports["http_port"], ports["grpc_port"], ports["metrics_port"]}) == 3
        url = f"http://127.0.0.1:{ports['http_port']}/v2/models/audio_tokenizer/ready"
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert reply.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics_port']}/metrics",
                                    timeout=10) as reply:
            assert b"nv_inference_count" in reply.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert proc.stderr.read() == ""
        assert not os.path.exists(ports["log_file"])  # the temporary log goes with a clean stop
        assert not list(Path("/dev/shm").glob(ports["shm_prefix"] + "*"))
    finally:
        if proc.poll() is None:
            proc.kill()
