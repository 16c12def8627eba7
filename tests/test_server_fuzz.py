"""Hostile input, fuzzed: hypothesis builds raw requests (any dtype, rank, batch size, declared
shape, length, NaN/Inf, sample rate, channel count, missing and unknown inputs) and sends them
over HTTP and gRPC. An independent validity predicate says which inputs break a rule; then

- an invalid request never succeeds: it fails with INVALID_ARGUMENT (HTTP 400) and the message
  names one of the inputs that broke a rule;
- a valid request succeeds;
- the server stays live after every request, and a known good request still succeeds after all.

Each public model is one `FuzzTarget` (model name, request strategy, predicate, good request,
hand-made rule cases the predicate is checked on): `audio_tokenizer` and `clone` (prompt audio,
prompt/target text, generation options). FUZZ_EXAMPLES (default 30) sets the examples per
protocol for the tokenizer, CLONE_FUZZ_EXAMPLES (default 15) for the clone, whose valid requests
run the whole pipeline (the synthetic LLM never ends by itself, so every valid clone carries
max_new_tokens). Examples are derandomized, so CI sees the same requests every run.
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

from conftest import TEST_MAX_AUDIO_SECONDS, TEST_MAX_TEXT_CHARS
from python_backends.settings import EditxSettings

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
CLONE_EXAMPLES = int(os.environ.get("CLONE_FUZZ_EXAMPLES", "15"))
NUMPY_OF = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT16": np.int16,
            "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_, "BYTES": np.object_}
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
    rule_cases: Callable[[], dict[str, Request]]  # input name → a request breaking only its rule
    examples: int
    ensemble: bool  # an ensemble model (Triton schedules the steps: see triton_gap)


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


def scalar(value, datatype: str = "INT32", shape: tuple[int, ...] = (1, 1)) -> Tensor:
    with np.errstate(over="ignore", invalid="ignore"):
        data = np.full(shape, value).astype(NUMPY_OF[datatype])
    return Tensor(data, datatype, shape)


def audio_inputs(draw, faults: set[str], limit_seconds: float, seconds: tuple[float, float],
                 send_channels: bool) -> Request:
    """waveform / sample_rate / channels of an audio request: any allowed rate and channel
    count, `seconds` of audio at any finite amplitude, with the audio FAULTS applied.
    `send_channels`: channels is always sent (the clone requires it)."""
    rate = draw(st.sampled_from(GOOD_RATES))
    channels = draw(st.sampled_from([1, 2, 3] if send_channels else [None, 1, 2, 3]))
    if "rate_value" in faults:
        rate = draw(st.sampled_from(BAD_RATES))
    if "channels_value" in faults:
        channels = draw(st.sampled_from([0, -2, -(2**31)]))
    if "waveform_over_limit" in faults and rate in GOOD_RATES:
        rate = min(rate, 22050)  # over the limit within the 4 Mi samples sent, 3 channels too
    per_channel = channels if channels and channels > 0 else 1
    audio_rate = rate if MIN_RATE <= rate <= MAX_RATE else 16000
    frames = draw(st.integers(max(1, int(seconds[0] * audio_rate)), int(seconds[1] * audio_rate)))
    if "waveform_over_limit" in faults:  # just or far over the limit, at most 4 Mi samples
        limit = int(limit_seconds * audio_rate)
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


@st.composite
def tokenizer_requests(draw) -> Request:
    """A valid request (at most 0.25 s, any allowed rate and channel count, any finite amplitude)
    with none, one or two faults from FAULTS applied."""
    faults = set(draw(st.lists(st.sampled_from(FAULTS), max_size=2, unique=True)))
    return audio_inputs(draw, faults, TEST_MAX_AUDIO_SECONDS, (0.0, 0.25), send_channels=False)


TOKENIZER_INPUTS = {"waveform": "FP32", "sample_rate": "INT32", "channels": "INT32"}
REQUIRED = ("waveform", "sample_rate")


def shape_violations(request: Request, inputs: dict[str, str], required: tuple[str, ...]) -> set[str]:
    """Inputs that break the model's signature: unknown, missing, wrong datatype, a declared
    shape that is not the data's or not [1, N] ([1, 1] for all but the waveform), batch sizes
    that differ."""
    bad = {name for name in request if name not in inputs}
    bad |= {name for name in required if name not in request}
    if len({tensor.declared[:1] for tensor in request.values()}) > 1:
        bad |= set(request)  # every input must have the same batch size: all take part
    for name, tensor in request.items():
        if name not in inputs:
            continue
        shape = tensor.declared
        if (tensor.datatype != inputs[name] or not tensor.honest or len(shape) != 2
                or shape[0] != 1 or (name != "waveform" and shape[1] != 1)):
            bad.add(name)
    return bad


def audio_violations(request: Request, max_seconds: float) -> set[str]:
    """The value rules of waveform / sample_rate / channels (signature already checked)."""
    bad = set()
    rate = int(request["sample_rate"].data[0, 0])
    channels = int(request["channels"].data[0, 0]) if "channels" in request else 1
    waveform = request["waveform"].data[0]
    if not MIN_RATE <= rate <= MAX_RATE:
        bad.add("sample_rate")
    if channels < 1:
        bad.add("channels")
    elif (waveform.size == 0 or waveform.size % channels or not np.isfinite(waveform).all()
          or (not bad and waveform.size / channels / rate > max_seconds)):
        bad.add("waveform")
    return bad


def tokenizer_violations(request: Request) -> set[str]:
    """The inputs of an `audio_tokenizer` request that break a rule (empty: valid)."""
    return (shape_violations(request, TOKENIZER_INPUTS, REQUIRED)
            or audio_violations(request, TEST_MAX_AUDIO_SECONDS))


def good_tokenizer_request() -> Request:
    audio = samples(7, 8000, 0.1, "FP32", None)[None]
    rate = np.array([[16000]], np.int32)
    return {"waveform": Tensor(audio, "FP32", audio.shape), "sample_rate": Tensor(rate, "INT32", (1, 1))}


def tokenizer_rule_cases() -> dict[str, Request]:
    good = good_tokenizer_request()
    waveform = good["waveform"]
    return {
        "waveform": {**good, "waveform": Tensor(waveform.data.astype(np.float64), "FP64",
                                                waveform.declared)},
        "sample_rate": {**good, "sample_rate": scalar(7999)},
        "channels": {**good, "channels": scalar(0)},
    }


# --------------------------------------------------------------------------- clone

CLONE = EditxSettings(editx_dir="", max_prompt_text_chars=TEST_MAX_TEXT_CHARS,
                      max_target_text_chars=TEST_MAX_TEXT_CHARS)  # the test server's limits
CLONE_INPUTS = {**TOKENIZER_INPUTS, "prompt_text": "BYTES", "target_text": "BYTES",
                "max_length": "INT32", "max_new_tokens": "INT32", "temperature": "FP32",
                "top_k": "INT32", "seed": "INT64", "greedy": "BOOL"}
CLONE_REQUIRED = ("waveform", "sample_rate", "channels", "prompt_text", "target_text")
TEXTS = ("Hello, this is a cloned voice.", "héllo wörld, 你好 🙂", "a\x00b", "x" * TEST_MAX_TEXT_CHARS,
         "é" * TEST_MAX_TEXT_CHARS)
BAD_UTF8 = (b"caf\xc3(", b"\xff\xfe", b"\xed\xa0\x80", b"\xc0\xaf", b"ok \x80")
BAD_TEXTS = ("", " \t\n\u3000", "x" * (TEST_MAX_TEXT_CHARS + 1), "é" * (TEST_MAX_TEXT_CHARS + 1),
             "y" * 100_000)
# (input, datatype, valid values, invalid values); the synthetic LLM stops only at a length
# limit, so max_new_tokens is always sent and a valid one is small
GENERATION = (
    ("max_new_tokens", "INT32", (2, 6, 31), (0, -1, -(2**31))),
    ("temperature", "FP32", (0.5, 1.0, 2.0), (0.0, -1.0, float("nan"), float("-inf"))),
    ("top_k", "INT32", (0, 1, 10), (-1, -(2**31))),
    ("seed", "INT64", (0, 7, 2**63 - 1), (-1, -(2**63))),
    ("max_length", "INT32", (CLONE.max_length,), (0, 1, -3, CLONE.max_length + 1, 2**31 - 1)),
    ("greedy", "BOOL", (False, True), ()),
)
TEXT_FAULTS = ("text_utf8", "text_blank", "text_dtype", "text_shape", "missing_text")
GENERATION_FAULTS = ("generation_value", "generation_dtype", "generation_shape")


def text_tensor(value: str | bytes) -> Tensor:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return Tensor(np.array([[raw]], dtype=np.object_), "BYTES", (1, 1))


def text_input(draw, faults: set[str]) -> Tensor:
    if "text_utf8" in faults:
        return text_tensor(draw(st.sampled_from(BAD_UTF8)))
    if "text_blank" in faults:
        return text_tensor(draw(st.sampled_from(BAD_TEXTS)))
    if "text_dtype" in faults:
        return scalar(5, draw(st.sampled_from(["INT32", "FP32", "INT64"])))
    if "text_shape" in faults:
        data = np.array([[b"one", b"two"]], dtype=np.object_)
        return Tensor(data, "BYTES", data.shape)
    return text_tensor(draw(st.sampled_from(TEXTS)))


FAULT_GROUPS = {"generation": GENERATION_FAULTS, "text": TEXT_FAULTS, "audio": FAULTS}


@st.composite
def clone_requests(draw) -> Request:
    """A valid clone request (0.5 to 1 s of prompt, texts within the limits, a few generation
    options, a small max_new_tokens) with no fault, one of a group (generation, text, audio)
    or two of any; a text or generation fault hits one input drawn at random."""
    group = draw(st.sampled_from([*FAULT_GROUPS, "none", "two"]))
    faults = set()
    if group in FAULT_GROUPS:
        faults = {draw(st.sampled_from(FAULT_GROUPS[group]))}
    elif group == "two":
        faults = set(draw(st.lists(st.sampled_from(GENERATION_FAULTS + TEXT_FAULTS + FAULTS),
                                   min_size=2, max_size=2, unique=True)))
    request = audio_inputs(draw, faults, CLONE.max_prompt_seconds, (0.5, 1.0), send_channels=True)
    broken_text = draw(st.sampled_from(["prompt_text", "target_text"]))
    for name in ("prompt_text", "target_text"):
        if name == broken_text and "missing_text" in faults:
            continue
        request[name] = text_input(draw, faults if name == broken_text else set())
    broken = draw(st.sampled_from(GENERATION))[0] if faults & set(GENERATION_FAULTS) else None
    for name, datatype, valid, invalid in GENERATION:
        if name != "max_new_tokens" and name != broken and not draw(st.booleans()):
            continue
        value = draw(st.sampled_from(valid))
        shape = (1, 1)
        if name == broken:
            if "generation_value" in faults and invalid:
                value = draw(st.sampled_from(invalid))
            if "generation_dtype" in faults:
                datatype = draw(st.sampled_from(sorted({"INT32", "INT64", "FP32", "FP64"} - {datatype})))
            if "generation_shape" in faults:
                shape = draw(st.sampled_from([(1,), (1, 2)]))
        request[name] = scalar(value, datatype, shape)
    return request


def clone_violations(request: Request) -> set[str]:
    """The inputs of a `clone` request that break a rule (empty: valid)."""
    bad = shape_violations(request, CLONE_INPUTS, CLONE_REQUIRED)
    if bad:
        return bad
    bad = audio_violations(request, CLONE.max_prompt_seconds)
    if not bad:
        channels = int(request["channels"].data[0, 0])
        mono = request["waveform"].data[0].reshape(-1, channels).mean(axis=1, dtype=np.float32)
        if mono.size < CLONE.min_prompt_seconds * int(request["sample_rate"].data[0, 0]):
            bad.add("waveform")  # too short for a voice prompt
        elif np.abs(mono).max() < CLONE.min_prompt_peak:
            bad.add("waveform")  # silent
    for name in ("prompt_text", "target_text"):
        try:
            text = bytes(request[name].data[0, 0]).decode("utf-8")
        except UnicodeDecodeError:
            bad.add(name)
            continue
        if not text.strip() or len(text) > TEST_MAX_TEXT_CHARS:
            bad.add(name)
    value = {name: request[name].data[0, 0].item() for name, *_ in GENERATION if name in request}
    rules = {"max_new_tokens": lambda v: v >= 1, "temperature": lambda v: v > 0,
             "top_k": lambda v: v >= 0, "seed": lambda v: v >= 0,
             "max_length": lambda v: 2 <= v <= CLONE.max_length, "greedy": lambda v: True}
    bad |= {name for name, v in value.items() if not rules[name](v)}
    return bad


def good_clone_request() -> Request:
    audio = samples(7, 16000, 0.1, "FP32", None)[None]
    return {"waveform": Tensor(audio, "FP32", audio.shape), "sample_rate": scalar(16000),
            "channels": scalar(1), "prompt_text": text_tensor("This is the voice to clone."),
            "target_text": text_tensor(TEXTS[0]), "max_new_tokens": scalar(6),
            "seed": scalar(5, "INT64")}


def clone_rule_cases() -> dict[str, Request]:
    good = good_clone_request()
    audio = good["waveform"].data
    return {
        "waveform": {**good, "waveform": Tensor(audio[:, :7999], "FP32", (1, 7999))},  # < 0.5 s
        "sample_rate": {**good, "sample_rate": scalar(192001)},
        "channels": {**good, "channels": scalar(-2)},
        "prompt_text": {**good, "prompt_text": text_tensor(b"\xff")},
        "target_text": {**good, "target_text": text_tensor(" \n ")},
        "max_new_tokens": {**good, "max_new_tokens": scalar(0)},
        "temperature": {**good, "temperature": scalar(0.0, "FP32")},
        "top_k": {**good, "top_k": scalar(-1)},
        "seed": {**good, "seed": scalar(-1, "INT64")},
        "max_length": {**good, "max_length": scalar(CLONE.max_length + 1)},
    }


TARGETS = [
    FuzzTarget("audio_tokenizer", tokenizer_requests(), tokenizer_violations, good_tokenizer_request,
               REQUIRED, tokenizer_rule_cases, EXAMPLES, ensemble=True),
    FuzzTarget("clone", clone_requests(), clone_violations, good_clone_request, CLONE_REQUIRED,
               clone_rule_cases, CLONE_EXAMPLES, ensemble=False),
]


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
    if target.ensemble and missing and bad == missing and len(request) >= len(target.required):
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

    @settings(max_examples=target.examples, deadline=None, derandomize=True, database=None,
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
    for name, request in target.rule_cases().items():
        assert target.violations(request) == {name}, name
    waveform = good["waveform"]
    lying = {**good, "waveform": Tensor(waveform.data, "FP32", (1, waveform.data.size + 1))}
    assert target.violations(lying) == {"waveform"}
    as_fp64 = {**good, "waveform": Tensor(waveform.data.astype(np.float64), "FP64", waveform.declared)}
    assert target.violations(as_fp64) == {"waveform"}
    missing = {k: v for k, v in good.items() if k != "sample_rate"}
    assert target.violations(missing) == {"sample_rate"}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_samples_near_float32_max_are_tokenized(protocol, triton_server):
    """Finite float32 samples are valid at any amplitude (peak normalisation rescales them)."""
    audio = samples(11, 1019, 1e38, "FP32", None)[None]
    request = {"waveform": Tensor(audio, "FP32", audio.shape), "sample_rate": scalar(8000)}
    assert tokenizer_violations(request) == set()
    send(protocol, url_of(triton_server, protocol), "audio_tokenizer", request)


@pytest.mark.parametrize("text", TEXTS[1:3], ids=["unicode", "nul"])
def test_unusual_valid_text_is_cloned(text, triton_server):
    """Text the fuzzer draws as valid: non-ASCII and an embedded NUL are cloned."""
    request = {**good_clone_request(), "target_text": text_tensor(text)}
    assert clone_violations(request) == set()
    wave = send("grpc", triton_server.grpc_url, "clone", request).as_numpy("waveform")
    assert wave.dtype == np.float32 and wave.shape[0] == 1 and np.isfinite(wave).all()


def test_max_new_tokens_that_leaves_no_audio_is_refused_by_name(triton_server):
    request = {**good_clone_request(), "max_new_tokens": scalar(1)}
    with pytest.raises(InferenceServerException) as info:
        send("grpc", triton_server.grpc_url, "clone", request)
    assert info.value.status() == INVALID_STATUS["grpc"]
    assert info.value.message().startswith("input 'max_new_tokens': is 1; allowed: "), info.value.message()
