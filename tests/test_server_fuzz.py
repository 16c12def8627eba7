"""Hostile input, fuzzed: hypothesis builds raw requests (any dtype, rank, batch size, declared
shape, length, NaN/Inf, sample rate, channel count, missing and unknown inputs) and sends them
over HTTP and gRPC. An independent validity predicate says which inputs break a rule; then

- an invalid request never succeeds: it fails with INVALID_ARGUMENT (HTTP 400) and the message
  names one of the inputs that broke a rule;
- a valid request succeeds;
- the server stays live after every request, and a known good request still succeeds after all.

Each public model is one `FuzzTarget` (model name, request strategy, predicate, good request);
FUZZ_EXAMPLES (default 30) sets the examples per target and protocol. Examples are derandomized,
so CI sees the same requests every run.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from conftest import TEST_MAX_AUDIO_SECONDS

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
NUMPY_OF = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT16": np.int16,
            "INT32": np.int32, "INT64": np.int64, "BYTES": np.object_}
INVALID_STATUS = {"grpc": "StatusCode.INVALID_ARGUMENT", "http": "400"}


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One input as sent: the data, its Triton datatype and the shape the request declares
    (which may lie about the data)."""

    data: np.ndarray
    datatype: str
    declared: tuple[int, ...]

    @property
    def honest(self) -> bool:
        return self.declared == self.data.shape

    def __repr__(self) -> str:
        lie = "" if self.honest else f" declared {list(self.declared)}"
        return f"{self.datatype}{list(self.data.shape)}{lie}"


Request = dict[str, Tensor]


@dataclasses.dataclass(frozen=True)
class FuzzTarget:
    model: str
    requests: st.SearchStrategy  # of Request
    violations: Callable[[Request], set[str]]  # names of the inputs that break a rule
    good: Callable[[], Request]
    required: tuple[str, ...]  # the model's required inputs (the others are optional)


# --------------------------------------------------------------------------- sending

def send(protocol: str, url: str, model: str, request: Request):
    """The raw request through tritonclient; returns the result or raises its exception."""
    tc = grpcclient if protocol == "grpc" else httpclient
    inputs = []
    for name, tensor in request.items():
        infer_input = tc.InferInput(name, list(tensor.data.shape), tensor.datatype)
        if protocol == "http":
            infer_input.set_data_from_numpy(tensor.data, binary_data=True)
        else:
            infer_input.set_data_from_numpy(tensor.data)
        infer_input.set_shape(list(tensor.declared))
        inputs.append(infer_input)
    client = tc.InferenceServerClient(url)
    try:
        return client.infer(model, inputs)
    finally:
        client.close()


def is_live(protocol: str, url: str) -> bool:
    tc = grpcclient if protocol == "grpc" else httpclient
    client = tc.InferenceServerClient(url)
    try:
        return client.is_server_live()
    finally:
        client.close()


# --------------------------------------------------------------------------- audio_tokenizer

MIN_RATE, MAX_RATE = 8000, 192000
GOOD_RATES = (8000, 16000, 22050, 44100, 48000, 192000)
BAD_RATES = (0, -1, -16000, 4000, 7999, 192001, 2**31 - 1, -(2**31))
AMPLITUDES = (0.0, 1e-4, 0.1, 1.0, 1e4)  # 1e38: see test_samples_near_float32_max_are_tokenized


def samples(seed: int, count: int, amplitude: float, datatype: str, poison: str | None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if datatype == "BYTES":
        return np.array([rng.bytes(int(rng.integers(0, 8))) + b"\xff\xfe" for _ in range(count)],
                        dtype=np.object_)
    audio = np.clip(rng.standard_normal(count) * amplitude, -3e38, 3e38)
    if poison and count:
        audio[rng.integers(0, count)] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[poison]
    with np.errstate(over="ignore", invalid="ignore"):
        return audio.astype(NUMPY_OF[datatype])


FAULTS = ("waveform_dtype", "waveform_rank", "waveform_batch", "waveform_empty", "waveform_nan",
          "waveform_over_limit", "waveform_partial_frame", "waveform_shape_lie", "rate_value",
          "rate_dtype", "rate_shape", "channels_value", "channels_dtype", "channels_shape",
          "missing_rate", "missing_waveform", "unknown_input")


def scalar(value: int, datatype: str = "INT32", shape: tuple[int, ...] = (1, 1)) -> Tensor:
    with np.errstate(over="ignore"):
        data = np.full(shape, value, dtype=np.int64).astype(NUMPY_OF[datatype])
    return Tensor(data, datatype, shape)


@st.composite
def tokenizer_requests(draw) -> Request:
    """A valid request (at most 0.25 s, any allowed rate and channel count, any finite amplitude)
    with none, one or two faults from FAULTS applied."""
    faults = set(draw(st.lists(st.sampled_from(FAULTS), max_size=2, unique=True)))
    rate = draw(st.sampled_from(GOOD_RATES))
    channels = draw(st.sampled_from([None, 1, 2, 3]))
    if "rate_value" in faults:
        rate = draw(st.sampled_from(BAD_RATES))
    if "channels_value" in faults:
        channels = draw(st.sampled_from([0, -2, -(2**31)]))
    per_channel = channels if channels and channels > 0 else 1
    audio_rate = rate if MIN_RATE <= rate <= MAX_RATE else 16000
    frames = draw(st.integers(1, audio_rate // 4))
    if "waveform_over_limit" in faults:  # just or far over the limit, at most 4 Mi samples
        limit = int(TEST_MAX_AUDIO_SECONDS * audio_rate)
        frames = min(limit + draw(st.sampled_from([1, audio_rate, 10 * limit])), 4 * 2**20 // per_channel)
    if "waveform_empty" in faults:
        frames = 0
    count = frames * per_channel + ("waveform_partial_frame" in faults)
    datatype = "FP32"
    if "waveform_dtype" in faults:
        datatype = draw(st.sampled_from(["FP64", "FP16", "INT16", "INT32", "BYTES"]))
    poison = draw(st.sampled_from(["nan", "inf", "-inf"])) if "waveform_nan" in faults else None
    data = samples(draw(st.integers(0, 2**32 - 1)), count, draw(st.sampled_from(AMPLITUDES)),
                   datatype, poison)
    data = data.reshape(1, count)
    if "waveform_rank" in faults:
        data = draw(st.sampled_from([data[0], data.reshape(1, 1, count)]))
    if "waveform_batch" in faults:
        data = draw(st.sampled_from([data[:0].reshape(0, count), np.concatenate([data, data])]))
    declared = data.shape
    if "waveform_shape_lie" in faults:
        declared = (1, data.size + draw(st.sampled_from([-1, 1, 1000])))
    request = {} if "missing_waveform" in faults else {"waveform": Tensor(data, datatype, declared)}
    rate_dtype = draw(st.sampled_from(["INT64", "FP32", "INT16"])) if "rate_dtype" in faults else "INT32"
    rate_shape = draw(st.sampled_from([(1,), (1, 2), (2, 1)])) if "rate_shape" in faults else (1, 1)
    if "missing_rate" not in faults:
        request["sample_rate"] = scalar(rate, rate_dtype, rate_shape)
    if channels is not None or faults & {"channels_dtype", "channels_shape"}:
        request["channels"] = scalar(
            1 if channels is None else channels,
            draw(st.sampled_from(["INT64", "FP32"])) if "channels_dtype" in faults else "INT32",
            draw(st.sampled_from([(1,), (1, 3)])) if "channels_shape" in faults else (1, 1))
    if "unknown_input" in faults:
        request["speaker"] = scalar(1)
    return request


TOKENIZER_INPUTS = {"waveform": "FP32", "sample_rate": "INT32", "channels": "INT32"}
REQUIRED = ("waveform", "sample_rate")


def tokenizer_violations(request: Request) -> set[str]:
    """The inputs of an `audio_tokenizer` request that break a rule (empty: valid)."""
    bad = {name for name in request if name not in TOKENIZER_INPUTS}
    bad |= {name for name in REQUIRED if name not in request}
    if len({tensor.declared[:1] for tensor in request.values()}) > 1:
        bad |= set(request)  # every input must have the same batch size: all take part
    for name, tensor in request.items():
        if name not in TOKENIZER_INPUTS:
            continue
        shape = tensor.declared
        if (tensor.datatype != TOKENIZER_INPUTS[name] or not tensor.honest or len(shape) != 2
                or shape[0] != 1 or (name != "waveform" and shape[1] != 1)):
            bad.add(name)
    if bad:
        return bad
    rate = int(request["sample_rate"].data[0, 0])
    channels = int(request["channels"].data[0, 0]) if "channels" in request else 1
    waveform = request["waveform"].data[0]
    if not MIN_RATE <= rate <= MAX_RATE:
        bad.add("sample_rate")
    if channels < 1:
        bad.add("channels")
    elif (waveform.size == 0 or waveform.size % channels or not np.isfinite(waveform).all()
          or (not bad and waveform.size / channels / rate > TEST_MAX_AUDIO_SECONDS)):
        bad.add("waveform")
    return bad


def good_tokenizer_request() -> Request:
    audio = samples(7, 8000, 0.1, "FP32", None)[None]
    rate = np.array([[16000]], np.int32)
    return {"waveform": Tensor(audio, "FP32", audio.shape), "sample_rate": Tensor(rate, "INT32", (1, 1))}


TARGETS = [FuzzTarget("audio_tokenizer", tokenizer_requests(), tokenizer_violations,
                      good_tokenizer_request, REQUIRED)]


# --------------------------------------------------------------------------- the test

def url_of(server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


def triton_gap(target: FuzzTarget, request: Request, protocol: str, bad: set[str]
               ) -> tuple[str, str] | None:
    """(status, message) where Triton itself answers without naming the input (observed with
    tritonserver 2.51):
    - HTTP: a negative dimension in the JSON `shape` fails Triton's JSON parser, with HTTP 500;
    - an ensemble request that carries an optional input instead of a required one passes
      Triton's input count check, and the ensemble then cannot start the step that needs it."""
    if protocol == "http" and any(d < 0 for t in request.values() for d in t.declared):
        return "500", "Unable to parse 'shape': attempt to access JSON non-unsigned-integer as unsigned-integer"
    missing = {name for name in target.required if name not in request}
    if missing and bad == missing and len(request) >= len(target.required):
        return INVALID_STATUS[protocol], (
            f"in ensemble '{target.model}', [request id: <id_unknown>] unexpected deadlock, at "
            "least one output is not set while no more ensemble steps can be made")
    return None


def check_answer(protocol: str, url: str, target: FuzzTarget, request: Request) -> None:
    bad = target.violations(request)
    gap = triton_gap(target, request, protocol, bad)
    try:
        result = send(protocol, url, target.model, request)
    except InferenceServerException as exc:
        assert bad, f"valid request {request} failed: {exc.message()}"
        if gap:
            assert (exc.status(), exc.message()) == gap, request
        else:
            assert exc.status() == INVALID_STATUS[protocol], (request, exc.status(), exc.message())
            named = {name for name in bad if f"'{name}'" in exc.message()}
            assert named, f"{request}: message names none of {sorted(bad)}: {exc.message()}"
    else:
        assert not bad, f"invalid request {request} (bad: {sorted(bad)}) succeeded: {result.get_response()}"
    assert is_live(protocol, url), f"server not live after {request}"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("target", TARGETS, ids=[t.model for t in TARGETS])
def test_fuzzed_requests_are_answered_by_the_rules(target, protocol, triton_server):
    url = url_of(triton_server, protocol)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(request=target.requests)
    def fuzz(request):
        check_answer(protocol, url, target, request)

    fuzz()
    send(protocol, url, target.model, target.good())  # still serving


@pytest.mark.parametrize("target", TARGETS, ids=[t.model for t in TARGETS])
def test_the_good_request_is_valid_and_the_predicate_rejects_each_rule(target):
    """The predicate is what the fuzz test trusts: check it on hand-made cases."""
    good = target.good()
    assert target.violations(good) == set()
    waveform = good["waveform"]
    cases = {
        "waveform": {**good, "waveform": Tensor(waveform.data.astype(np.float64), "FP64",
                                                waveform.declared)},
        "sample_rate": {**good, "sample_rate": Tensor(np.array([[7999]], np.int32), "INT32", (1, 1))},
        "channels": {**good, "channels": Tensor(np.array([[0]], np.int32), "INT32", (1, 1))},
    }
    for name, request in cases.items():
        assert target.violations(request) == {name}
    lying = {**good, "waveform": Tensor(waveform.data, "FP32", (1, waveform.data.size + 1))}
    assert target.violations(lying) == {"waveform"}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_samples_near_float32_max_are_tokenized(protocol, triton_server):
    """Finite float32 samples are valid at any amplitude (peak normalisation rescales them)."""
    audio = samples(11, 1019, 1e38, "FP32", None)[None]
    request = {"waveform": Tensor(audio, "FP32", audio.shape), "sample_rate": scalar(8000)}
    assert tokenizer_violations(request) == set()
    send(protocol, url_of(triton_server, protocol), "audio_tokenizer", request)
