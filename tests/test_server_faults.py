"""Faults on a server of our own (not the session server): a Python backend stub killed under
load, and corrupt weight files. What tritonserver 2.51 does, observed and pinned here:

- SIGKILL of the `vq02` stub: every request that reaches it fails with INTERNAL "in ensemble
  'audio_tokenizer', Stub process 'vq02_0_0' is not healthy.", while the server and the model
  still report ready, and the stub is not restarted (the failures go on). docker/healthcheck.py
  sees the failure and reloads the model (explicit model control); then requests succeed again.
- SIGKILL of the `llm_stream` stub under clone load: every clone fails with INTERNAL "internal
  error: EngineError: model 'llm_stream' failed: Stub process 'llm_stream_0_0' is not
  healthy." while everything still reports ready and nothing restarts the stub; the
  healthcheck's `llm` probe fails the same way, it reloads `llm_stream`, and clones succeed
  again.
- A truncated weight file: the model that reads it fails to load, the server refuses to start
  ("failed to load all models"), and the log names the model and the file. Likewise a missing
  EditX tokenizer.model (prompt_builder, edit_prompt_builder); a truncated EditX flow.pt fails
  token2wav with torch's message, which does not name the file (pinned as a known gap).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from build_scripts.build_repository import RepositoryOptions, build
from build_scripts.serve import ServerStartError, TritonServer
from conftest import ROOT
from perf.saturation import clone_inputs
from python_backends.settings import (CENTROIDS_FILE, COSYVOICE_DIR, SPEECH_TOKENIZER_FILE,
                                      TEXT_TOKENIZER_FILE)

EXPLICIT = ("--model-control-mode=explicit", "--load-model=*")
OPTIONS = RepositoryOptions(max_batch_size=4, queue_delay_us=1000, max_audio_seconds=10.0)


def load_healthcheck():
    """docker/healthcheck.py (docker/ is no package: the name would clash with docker-py)."""
    spec = importlib.util.spec_from_file_location("step_audio_healthcheck",
                                                  ROOT / "docker" / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


healthcheck = load_healthcheck()


def stub_pids(server_pid: int, model: str) -> list[int]:
    """Python backend stubs of `model`: children of tritonserver whose command line runs
    REPO/<model>/1/model.py."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if (parent == server_pid and argv[0].endswith(b"triton_python_backend_stub")
                and len(argv) > 1 and argv[1].endswith(f"/{model}/1/model.py".encode())):
            pids.append(int(proc.name))
    return pids


def infer(client, inputs: dict[str, np.ndarray], model: str = "audio_tokenizer",
          timeout_s: float | None = None):
    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return client.infer(model, tensors, client_timeout=timeout_s)


class Load:
    """`threads` clients sending one request to `model` in a loop until stopped; outcomes are
    (monotonic send time, "ok" or the error message)."""

    def __init__(self, url: str, inputs: dict[str, np.ndarray], threads: int = 3,
                 model: str = "audio_tokenizer", timeout_s: float | None = None):
        self.url, self.inputs, self.model, self.outcomes = url, inputs, model, []
        self.timeout_s = timeout_s  # client deadline per request
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                infer(client, self.inputs, self.model, self.timeout_s)
                self.outcomes.append((sent, "ok"))
            except InferenceServerException as exc:
                self.outcomes.append((sent, f"{exc.status()} {exc.message()}"))
        client.close()

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def since(self, start: float) -> Counter:
        return Counter(outcome for sent, outcome in list(self.outcomes) if sent >= start)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def test_killed_stub_fails_its_requests_until_the_healthcheck_reloads_it(tmp_path, tiny_weights):
    repo = build(tiny_weights, tmp_path / "repo", OPTIONS)
    inputs = healthcheck.tokenizer_probe()
    dead = ("StatusCode.INTERNAL in ensemble 'audio_tokenizer', Stub process 'vq02_0_0' is not "
            "healthy.")
    with TritonServer(repo, address="127.0.0.1", log_file=tmp_path / "server.log",
                      extra_args=EXPLICIT) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert healthcheck.check(server.http_url) == healthcheck.Health(True, "'audio_tokenizer' answered")
        (victim,) = stub_pids(server.process.pid, "vq02")
        with Load(server.grpc_url, inputs) as load:
            wait_for(lambda: load.since(0)["ok"] >= 5, 30, "5 answers before the kill")
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda: load.since(killed + 0.5)[dead] >= 3, 30, "failures after the kill")
            # Triton still reports everything ready and restarts nothing
            assert client.is_server_live() and client.is_server_ready()
            assert client.is_model_ready("vq02")
            assert stub_pids(server.process.pid, "vq02") == []
            after = load.since(killed + 0.5)
            assert set(after) == {dead}, after

            health = healthcheck.check(server.http_url)
            assert not health.healthy and health.reloaded == ("vq02",)
            assert health.message == f"'audio_tokenizer' failed: {dead.split(' ', 1)[1]}"
            reloaded = time.monotonic()
            assert len(stub_pids(server.process.pid, "vq02")) == 1
            wait_for(lambda: load.since(reloaded)["ok"] >= 5, 30, "answers after the reload")
            assert set(load.since(reloaded)) == {"ok"}, load.since(reloaded)
        assert healthcheck.check(server.http_url).healthy
        client.close()


@pytest.mark.xfail(strict=False, reason=(
    "timing: a clone that is inside llm_stream when its stub is killed never gets an answer "
    "(Triton 2.51 never completes a BLS stream from a dead stub) and waits for its client "
    "deadline; when both load threads are there at the kill, no failure arrives in 60 s"))
def test_killed_llm_stream_stub_fails_clones_until_the_healthcheck_reloads_it(tmp_path, tiny_weights,
                                                                             tiny_editx):
    repo = build(tiny_weights, tmp_path / "repo", OPTIONS, editx=tiny_editx)
    request = clone_inputs(1.0, count=1)[0]  # one voice, max_new_tokens 31: the cache holds it
    failure = ("internal error: EngineError: model 'llm_stream' failed: Stub process "
               "'llm_stream_0_0' is not healthy.")
    answers = ("'audio_tokenizer' answered", "'prompt_encoder' answered", "'llm' answered",
               "'token2wav' answered")
    with TritonServer(repo, address="127.0.0.1", log_file=tmp_path / "server.log",
                      extra_args=EXPLICIT) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert healthcheck.ready_probes(server.http_url) == tuple(healthcheck.PROBES)
        assert healthcheck.check_all(server.http_url) == healthcheck.Health(True, "; ".join(answers))
        (victim,) = stub_pids(server.process.pid, "llm_stream")
        with Load(server.grpc_url, request, threads=2, model="clone", timeout_s=120) as load:
            wait_for(lambda: load.since(0)["ok"] >= 3, 60, "3 clones before the kill")
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda: load.since(killed + 0.5)[f"StatusCode.INTERNAL {failure}"] >= 2, 60,
                     "failed clones after the kill")
            assert client.is_server_ready() and client.is_model_ready("llm_stream")
            assert client.is_model_ready("clone")
            assert stub_pids(server.process.pid, "llm_stream") == []
            assert set(load.since(killed + 0.5)) == {f"StatusCode.INTERNAL {failure}"}

            health = healthcheck.check_all(server.http_url)
            assert health == healthcheck.Health(False, "; ".join(
                [*answers[:2], f"'llm' failed: {failure}", answers[3]]), ("llm_stream",))
            reloaded = time.monotonic()
            assert len(stub_pids(server.process.pid, "llm_stream")) == 1
            wait_for(lambda: load.since(reloaded)["ok"] >= 3, 60, "clones after the reload")
            assert set(load.since(reloaded)) == {"ok"}, load.since(reloaded)
        assert healthcheck.check_all(server.http_url).healthy
        client.close()


def test_healthcheck_reads_model_names_from_instance_names():
    message = ("in ensemble 'clone', Stub process 'token_merge_0_1' is not healthy.; "
               "Stub process 'vq02_1_0' is not healthy.; Stub process 'token_merge_0_0' is not healthy.")
    assert healthcheck.dead_stub_models(message) == ("token_merge", "vq02")


@pytest.fixture(scope="module")
def corrupt_start(tmp_path_factory, tiny_weights):
    """A server start on weights whose vq06 ONNX and vq02 centroids are cut in half: the
    ServerStartError's text and the server log."""
    root = tmp_path_factory.mktemp("corrupt")
    weights = root / "weights"
    shutil.copytree(tiny_weights, weights, ignore=shutil.ignore_patterns(".*lock"))
    for name in (SPEECH_TOKENIZER_FILE, CENTROIDS_FILE):
        data = (weights / name).read_bytes()
        (weights / name).write_bytes(data[: len(data) // 2])
    repo = build(weights, root / "repo", OPTIONS)
    log = root / "server.log"
    with pytest.raises(ServerStartError) as failed:
        TritonServer(repo, address="127.0.0.1", log_file=log, startup_timeout=120).start()
    return weights, str(failed.value), log.read_text(encoding="utf-8", errors="replace")


def test_corrupt_weights_stop_the_server_from_starting(corrupt_start):
    _, error, log = corrupt_start
    assert "error: creating server: Internal - failed to load all models" in log
    assert error.startswith("tritonserver exited with code 1 during startup")
    assert "failed to load 'vq06' version 1" in error and "failed to load 'vq02' version 1" in error


def test_corrupt_speech_tokenizer_onnx_is_named(corrupt_start):
    weights, error, _ = corrupt_start
    assert (f"failed to load 'vq06' version 1: Internal: InvalidProtobuf: [ONNXRuntimeError] : 7 : "
            f"INVALID_PROTOBUF : Load model from {weights / SPEECH_TOKENIZER_FILE} failed:Protobuf "
            "parsing failed.") in error


def test_corrupt_centroids_file_is_named(corrupt_start):
    weights, error, _ = corrupt_start
    line = next(line for line in error.splitlines() if "failed to load 'vq02' version 1" in line)
    assert str(weights / CENTROIDS_FILE) in line


@pytest.fixture(scope="module")
def corrupt_editx_start(tmp_path_factory, tiny_weights, tiny_editx):
    """A server start on EditX weights whose flow.pt was cut in half and whose tokenizer.model
    was removed after the repository was built: (weights, ServerStartError text)."""
    root = tmp_path_factory.mktemp("corrupt_editx")
    editx = root / "editx"
    shutil.copytree(tiny_editx, editx, ignore=shutil.ignore_patterns(".*lock"))
    repo = build(tiny_weights, root / "repo", OPTIONS, editx=editx)
    flow = editx / COSYVOICE_DIR / "flow.pt"
    flow.write_bytes(flow.read_bytes()[: flow.stat().st_size // 2])
    (editx / TEXT_TOKENIZER_FILE).unlink()
    with pytest.raises(ServerStartError) as failed:
        TritonServer(repo, address="127.0.0.1", log_file=root / "server.log",
                     startup_timeout=300).start()
    return editx, str(failed.value)


def load_error(error: str, model: str) -> str:
    return next(line for line in error.splitlines() if f"failed to load '{model}' version 1" in line)


@pytest.mark.parametrize("model", ["prompt_builder", "edit_prompt_builder"])
def test_missing_text_tokenizer_is_named(corrupt_editx_start, model):
    editx, error = corrupt_editx_start
    assert (f"failed to load '{model}' version 1: Internal: FileNotFoundError: [Errno 2] No such "
            f"file or directory: '{editx / TEXT_TOKENIZER_FILE}'") in load_error(error, model)


def test_truncated_flow_checkpoint_is_named(corrupt_editx_start):
    editx, error = corrupt_editx_start
    line = load_error(error, "token2wav")
    assert f"cannot read the flow weights {editx / COSYVOICE_DIR / 'flow.pt'}" in line
    assert "PytorchStreamReader failed reading zip archive" in line
