"""python_backends.serving (triton_io, model_config, tokenizer_models) without a server: a stand-in `triton_python_backend_utils`."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from python_backends.serving import model_config, tokenizer_models, triton_io
from python_backends.errors import InvalidInput
from python_backends.settings import TokenizerSettings


class FakeTensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class FakeError:
    INTERNAL, INVALID_ARG = "INTERNAL", "INVALID_ARG"

    def __init__(self, message, code="INTERNAL"):
        self.msg, self.code = message, code


class FakeResponse:
    def __init__(self, output_tensors=(), error=None):
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


class FakeRequest:
    def __init__(self, **inputs):
        self.inputs = {k: FakeTensor(k, v) for k, v in inputs.items()}


@pytest.fixture(autouse=True)
def fake_pb_utils(monkeypatch):
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = FakeTensor
    module.TritonError = FakeError
    module.InferenceResponse = FakeResponse
    module.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    module.logged = []
    module.Logger = types.SimpleNamespace(log_error=module.logged.append)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    return module


def _args(kind="CPU", device_id="0", parameters=None):
    config = {"name": "vq02", "parameters": {k: {"string_value": v}
                                             for k, v in (parameters or {}).items()}}
    return {"model_config": json.dumps(config), "model_instance_kind": kind,
            "model_instance_device_id": device_id, "model_name": "vq02"}


def test_instance_device():
    assert model_config.instance_device(_args("CPU", "0")) == "cpu"
    assert model_config.instance_device(_args("GPU", "0")) == "cuda:0"
    assert model_config.instance_device(_args("GPU", "3")) == "cuda:3"
    assert model_config.instance_device({"model_config": "{}"}) == "cpu"


def test_load_settings_takes_the_device_from_the_instance():
    settings = TokenizerSettings(weights_dir="/w", max_audio_seconds=40.0, num_threads=2)
    args = _args("GPU", "1", {"tokenizer_settings": settings.to_json()})
    loaded = model_config.load_settings(args)
    assert loaded == TokenizerSettings(weights_dir="/w", device="cuda:1", max_audio_seconds=40.0,
                                       num_threads=2)
    assert model_config.model_parameters(args) == {"tokenizer_settings": settings.to_json()}


def test_load_settings_without_parameter_says_how_to_fix():
    with pytest.raises(RuntimeError, match="lacks the 'tokenizer_settings' parameter; build the "
                                           "repository with build_scripts/build_repository.py"):
        model_config.load_settings(_args())


def test_read_utterance_and_scalar():
    request = FakeRequest(waveform=np.arange(6, dtype=np.float32)[None],
                          sample_rate=np.array([[22050]], np.int32))
    audio = triton_io.read_utterance(request, "waveform")
    assert audio.dtype == np.float32 and audio.tolist() == [0, 1, 2, 3, 4, 5]
    assert triton_io.read_scalar(request, "sample_rate") == 22050
    assert triton_io.read_scalar(request, "channels", default=1) == 1
    assert triton_io.read_utterance(request, "channels", optional=True) is None


@pytest.mark.parametrize("array,message", [
    (np.zeros((2, 5), np.float32),
     "input 'waveform': has batch size 2; allowed: batch size 1: one utterance per request, "
     "send several requests to batch"),
    (np.zeros((1, 2, 5), np.float32),
     "input 'waveform': has shape [1, 2, 5]; allowed: shape [1, N]: one utterance per request"),
])
def test_read_utterance_rejects_batches_and_ranks(array, message):
    with pytest.raises(InvalidInput) as caught:
        triton_io.read_utterance(FakeRequest(waveform=array), "waveform")
    assert str(caught.value) == message


def test_missing_required_input_and_multi_value_scalar():
    with pytest.raises(InvalidInput, match="input 'sample_rate': is missing"):
        triton_io.read_scalar(FakeRequest(), "sample_rate")
    with pytest.raises(InvalidInput) as caught:
        triton_io.read_scalar(FakeRequest(sample_rate=np.array([[1, 2]], np.int32)), "sample_rate")
    assert str(caught.value) == "input 'sample_rate': holds 2 values; allowed: exactly one integer"


@pytest.mark.parametrize("audio,message", [
    (np.zeros((1, 0), np.float32), "input 'audio_16k': is empty; allowed: at least one sample"),
    (np.array([[0.0, np.nan]], np.float32),
     "input 'audio_16k': contains NaN or Inf; allowed: finite float32 samples"),
])
def test_read_audio_checks(audio, message):
    with pytest.raises(InvalidInput) as caught:
        triton_io.read_audio(FakeRequest(audio_16k=audio), "audio_16k")
    assert str(caught.value) == message


def test_respond_batched_runs_once_and_isolates_bad_requests():
    calls = []

    def run(items):
        calls.append(len(items))
        return [np.full(len(a), 7, np.int32) for a in items]

    requests = [FakeRequest(audio_16k=np.ones((1, 3), np.float32)),
                FakeRequest(audio_16k=np.array([[np.inf]], np.float32)),
                FakeRequest(audio_16k=np.ones((1, 5), np.float32))]
    responses = triton_io.respond_batched(
        requests, parse=lambda r: triton_io.read_audio(r, "audio_16k"), run=run,
        outputs=lambda codes: [triton_io.tensor("vq02_codes", codes)])
    assert calls == [2]
    assert responses[0].error is None and responses[0].outputs["vq02_codes"].tolist() == [[7] * 3]
    assert responses[2].outputs["vq02_codes"].shape == (1, 5)
    assert responses[1].error.code == "INVALID_ARG"
    assert responses[1].error.msg == ("input 'audio_16k': contains NaN or Inf; "
                                      "allowed: finite float32 samples")


def test_respond_batched_failure_of_the_batch_answers_every_member(fake_pb_utils):
    def run(items):
        raise MemoryError("out of memory")

    requests = [FakeRequest(audio_16k=np.ones((1, 3), np.float32)) for _ in range(3)]
    responses = triton_io.respond_batched(requests, lambda r: triton_io.read_audio(r, "audio_16k"),
                                          run, lambda c: [])
    assert [r.error.msg for r in responses] == ["internal error: MemoryError: out of memory"] * 3
    assert {r.error.code for r in responses} == {"INTERNAL"}
    assert "MemoryError" in fake_pb_utils.logged[0]
    assert triton_io.respond_batched([], lambda r: r, run, lambda c: []) == []


def test_respond_each_answers_each_request_alone():
    def handle(request):
        rate = triton_io.read_scalar(request, "sample_rate")
        if rate < 8000:
            raise InvalidInput("sample_rate", f"got {rate} Hz", "at least 8000 Hz")
        return [triton_io.bytes_tensor("token_str", f"<audio_{rate}>")]

    responses = triton_io.respond_each(
        [FakeRequest(sample_rate=np.array([[16000]], np.int32)),
         FakeRequest(sample_rate=np.array([[10]], np.int32))], handle)
    assert responses[0].outputs["token_str"].tolist() == [[b"<audio_16000>"]]
    assert responses[0].outputs["token_str"].dtype == object
    assert responses[1].error.msg == "input 'sample_rate': got 10 Hz; allowed: at least 8000 Hz"
    assert responses[1].error.code == "INVALID_ARG"


def test_warmup_audio_is_deterministic():
    a, b = tokenizer_models.warmup_audio(0.5, 22050), tokenizer_models.warmup_audio(0.5, 22050)
    assert a.dtype == np.float32 and a.shape == (11025,) and np.array_equal(a, b)
