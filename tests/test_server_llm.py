"""The Step1 LLM as served: `llm` (HTTP, unary gRPC) and `llm_stream` (gRPC stream) on the tiny
synthetic EditX weights answer exactly what the plain HF-style reference generates, alone or
among concurrent requests, greedy or seeded; bad input gets an error naming the input and the
rule, and the server keeps serving."""
from __future__ import annotations

import json
import queue
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from client.triton_base import infer_inputs
from python_backends.llm import cpu_runtime
from python_backends.llm.reference import reference_generate, reference_weights
from python_backends.llm.sampling import SamplingParams
from python_backends.settings import LLM, EditxSettings

torch.set_num_threads(1)
TIMEOUT_S = 300.0
MAX_NEW = 20
AUDIO = LLM.audio_token_offset
DTYPES = {"max_length": np.int32, "max_new_tokens": np.int32, "temperature": np.float32,
          "top_k": np.int32, "seed": np.int64, "greedy": np.bool_, "stream": np.bool_}
# <s> <|BOT|>, text ids, <audio_N> ids, as a clone prompt looks
PROMPTS = [
    [LLM.bos_id, LLM.bot_id, 1059, 7712, 305, 2411, AUDIO + 17, AUDIO + 1030, AUDIO + 4095],
    [LLM.bos_id, LLM.bot_id, 22, 9876, AUDIO + 5, AUDIO + 5, AUDIO + 2000, LLM.eot_id, LLM.bot_id],
    [LLM.bos_id, LLM.bot_id, 40000, 512, 813, 64000, 3321] + [AUDIO + k for k in range(100, 130)],
]
CONCURRENT = PROMPTS + [
    [LLM.bos_id, LLM.bot_id, 77, AUDIO + 1],
    [LLM.bos_id, LLM.bot_id] + [AUDIO + 3 * k for k in range(60)],
    [LLM.bos_id, LLM.bot_id, 6000, 6001, 6002, AUDIO + 5119, LLM.eot_id, LLM.bot_id, 12],
]
GREEDY = dict(greedy=True, max_new_tokens=MAX_NEW)
SAMPLED = dict(greedy=False, temperature=0.7, top_k=50, max_new_tokens=MAX_NEW)


# ------------------------------------------------------------------ clients

def _arrays(ids, options: dict) -> dict[str, np.ndarray]:
    arrays = {"input_ids": np.asarray(ids, np.int32).reshape(1, -1)}
    arrays.update({name: np.array([[value]], DTYPES[name]) for name, value in options.items()})
    return arrays


def grpc_llm(url: str, ids, **options) -> list[int]:
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer("llm", infer_inputs(grpcclient, _arrays(ids, options)),
                              client_timeout=TIMEOUT_S)
    return _ids(result.as_numpy("output_ids"))


def http_llm(url: str, ids, **options) -> list[int]:
    with httpclient.InferenceServerClient(url, connection_timeout=TIMEOUT_S,
                                          network_timeout=TIMEOUT_S) as client:
        result = client.infer("llm", infer_inputs(httpclient, _arrays(ids, options)))
    return _ids(result.as_numpy("output_ids"))


def _ids(output: np.ndarray) -> list[int]:
    assert output.dtype == np.int32 and output.ndim == 2 and output.shape[0] == 1
    return output[0].tolist()


class StreamAnswer:
    """Every message one `llm_stream` request got on its gRPC stream, in order."""

    def __init__(self, messages: list):
        self.messages = messages

    @property
    def errors(self) -> list[InferenceServerException]:
        return [error for _, error in self.messages if error is not None]

    @property
    def chunks(self) -> list[list[int]]:
        """The ids each response carried (responses without ids left out)."""
        return [_ids(r.as_numpy("output_ids")) for r, e in self.messages
                if e is None and r.as_numpy("output_ids") is not None]

    @property
    def finals(self) -> list[bool]:
        return [r.get_response().parameters["triton_final_response"].bool_param
                for r, e in self.messages if e is None]


def stream_messages(url: str, requests: list[tuple[list[int], dict]]) -> list:
    """Send the requests (ids "0", "1", ...) on one stream; closing the stream waits until the
    server ended it, so the (result, error) messages are everything the server sent."""
    messages = queue.Queue()
    with grpcclient.InferenceServerClient(url) as client:
        client.start_stream(callback=lambda result, error: messages.put((result, error)),
                            stream_timeout=TIMEOUT_S)
        for number, (ids, options) in enumerate(requests):
            client.async_stream_infer("llm_stream", infer_inputs(grpcclient, _arrays(ids, options)),
                                      request_id=str(number), enable_empty_final_response=True)
        client.stop_stream()
    return [messages.get_nowait() for _ in range(messages.qsize())]


def stream_llm(url: str, ids, **options) -> StreamAnswer:
    return StreamAnswer(stream_messages(url, [(ids, options)]))


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def llm_settings(server_repo) -> EditxSettings:
    config = text_format.Parse((server_repo / "llm_stream" / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    return EditxSettings.from_json(config.parameters["editx_settings"].string_value)


@pytest.fixture(scope="module")
def vocab_size(tiny_editx) -> int:
    return json.loads((tiny_editx / "config.json").read_text())["vocab_size"]


@pytest.fixture(scope="module")
def weights(tiny_editx):
    return reference_weights(tiny_editx, torch.float32)


def expected(weights, prompt, options: dict) -> list[int]:
    """The reference's output for the server's reading of `options`: the total length is
    max_length (default the configured one), capped at prompt + max_new_tokens."""
    max_length = options.get("max_length", LLM.max_length)
    if "max_new_tokens" in options:
        max_length = min(max_length, len(prompt) + options["max_new_tokens"])
    params = SamplingParams(greedy=options["greedy"],
                            temperature=options.get("temperature", LLM.temperature),
                            top_k=options.get("top_k", LLM.top_k), seed=options.get("seed"),
                            max_length=max_length)
    return reference_generate(weights, prompt, params)


@pytest.fixture(scope="module")
def greedy_reference(weights) -> list[list[int]]:
    return [expected(weights, p, GREEDY) for p in PROMPTS]


# ------------------------------------------------------------------ generation

def test_server_runs_float32_with_the_default_length_limit(llm_settings):
    """What the parity tests below assume."""
    assert (llm_settings.llm_dtype, llm_settings.max_length) == ("float32", LLM.max_length)


@pytest.mark.skipif(cpu_runtime.intel_openmp_path() is None, reason="intel-openmp not installed")
def test_llm_stream_stub_runs_on_intel_openmp(triton_server):
    """llm_stream's model.py loads libiomp5 before torch (python_backends/llm/cpu_runtime.py);
    tests/test_llm_packed.py shows torch's parallel regions then run on it."""
    pids, _ = triton_server.leftovers()
    stubs = []
    for pid in pids:
        try:
            if b"/llm_stream/1/model.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                stubs.append(Path(f"/proc/{pid}/maps").read_text())
        except OSError:
            continue
    assert stubs and all("libiomp5.so" in maps for maps in stubs)


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_greedy_grpc_and_http_equal_reference(triton_server, greedy_reference, index):
    want = greedy_reference[index]
    # the synthetic model never emits <|EOT|>: MAX_NEW ids generated, the last dropped
    assert len(want) == MAX_NEW - 1
    assert all(AUDIO <= i < AUDIO + LLM.audio_tokens for i in want)
    assert grpc_llm(triton_server.grpc_url, PROMPTS[index], **GREEDY) == want
    assert http_llm(triton_server.http_url, PROMPTS[index], **GREEDY) == want


@pytest.mark.parametrize("limits", [dict(max_length=len(PROMPTS[0]) + 7),
                                    dict(max_length=len(PROMPTS[0]) + 7, max_new_tokens=MAX_NEW),
                                    dict(max_length=len(PROMPTS[0]) + 7, max_new_tokens=4),
                                    dict(max_length=len(PROMPTS[0]) + 2)])
def test_length_limits(triton_server, weights, limits):
    options = dict(limits, greedy=True)
    want = expected(weights, PROMPTS[0], options)
    stop = min(limits["max_length"], len(PROMPTS[0]) + limits.get("max_new_tokens", MAX_NEW))
    assert len(want) == stop - len(PROMPTS[0]) - 1
    assert http_llm(triton_server.http_url, PROMPTS[0], **options) == want


def test_a_lone_prompt_longer_than_the_prefill_budget_is_answered(triton_server, weights,
                                                                   llm_settings):
    """Its prompt is prefilled over several steps, with no other request waiting or decoding
    (llm_stream's generator thread must keep stepping it), and it equals the reference."""
    prompt = [LLM.bos_id, LLM.bot_id] + [AUDIO + (7 * k) % LLM.audio_tokens
                                         for k in range(llm_settings.llm_prefill_budget + 40)]
    assert grpc_llm(triton_server.grpc_url, prompt, **GREEDY) == expected(weights, prompt, GREEDY)


def test_greedy_prompts_give_different_outputs(greedy_reference):
    """Otherwise the parity above could not tell the prompts apart."""
    assert len({tuple(ids) for ids in greedy_reference}) == len(PROMPTS)


def test_stream_true_sends_ids_in_several_responses_then_final(triton_server, greedy_reference):
    answer = stream_llm(triton_server.grpc_url, PROMPTS[0], stream=True, **GREEDY)
    assert answer.errors == []
    assert len(answer.chunks) >= 2
    assert all(chunk for chunk in answer.chunks)
    assert sum(answer.chunks, []) == greedy_reference[0]
    # only the last message (the empty one) is final
    assert answer.finals == [False] * (len(answer.finals) - 1) + [True]
    assert answer.messages[-1][0].as_numpy("output_ids") is None


def test_stream_is_the_default(triton_server, greedy_reference):
    answer = stream_llm(triton_server.grpc_url, PROMPTS[1], **GREEDY)
    assert answer.errors == []
    assert len(answer.chunks) >= 2
    assert sum(answer.chunks, []) == greedy_reference[1]


def test_stream_false_sends_one_final_response_with_all_ids(triton_server, greedy_reference):
    answer = stream_llm(triton_server.grpc_url, PROMPTS[2], stream=False, **GREEDY)
    assert answer.errors == []
    assert answer.finals == [True]
    assert answer.chunks == [greedy_reference[2]]


def test_requests_sharing_one_stream_each_get_their_own_ids(triton_server, greedy_reference):
    messages = stream_messages(triton_server.grpc_url, [(p, dict(GREEDY)) for p in PROMPTS])
    assert [error for _, error in messages if error is not None] == []
    answers = {str(n): StreamAnswer([]) for n in range(len(PROMPTS))}
    for result, error in messages:
        answers[result.get_response().id].messages.append((result, error))
    for number, answer in answers.items():
        assert sum(answer.chunks, []) == greedy_reference[int(number)]
        assert answer.finals[-1] and answer.finals.count(True) == 1


def test_concurrent_requests_equal_each_alone(triton_server):
    """Requests of different lengths join and leave the continuous batch between steps."""
    url = triton_server.grpc_url
    lengths = [MAX_NEW - 3 * (i % 3) for i in range(len(CONCURRENT))]
    alone = [grpc_llm(url, p, greedy=True, max_new_tokens=n) for p, n in zip(CONCURRENT, lengths)]
    assert len({tuple(ids) for ids in alone}) == len(CONCURRENT)
    together: dict[int, object] = {}
    barrier = threading.Barrier(len(CONCURRENT))

    def call(i):
        barrier.wait()
        try:
            together[i] = grpc_llm(url, CONCURRENT[i], greedy=True, max_new_tokens=lengths[i])
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            together[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(CONCURRENT))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * TIMEOUT_S)
    assert [together.get(i) for i in range(len(CONCURRENT))] == alone


def test_seeded_sampling_reproducible_and_equal_to_reference(triton_server, weights):
    url, prompt = triton_server.grpc_url, PROMPTS[0]
    first = grpc_llm(url, prompt, seed=1234, **SAMPLED)
    assert http_llm(triton_server.http_url, prompt, seed=1234, **SAMPLED) == first
    assert first == expected(weights, prompt, dict(SAMPLED, seed=1234))
    other = grpc_llm(url, prompt, seed=1235, **SAMPLED)
    assert other != first
    assert other == expected(weights, prompt, dict(SAMPLED, seed=1235))
    greedy = grpc_llm(url, prompt, **GREEDY)
    assert first != greedy


def test_seeded_sampling_over_the_stream(triton_server):
    answer = stream_llm(triton_server.grpc_url, PROMPTS[2], seed=99, **SAMPLED)
    assert answer.errors == []
    unary = grpc_llm(triton_server.grpc_url, PROMPTS[2], seed=99, **SAMPLED)
    assert sum(answer.chunks, []) == unary


# ------------------------------------------------------------------ bad input

def _bad(vocab: int, max_length: int) -> dict[str, tuple[list[int], dict, str]]:
    """case id -> (input ids, options, the exact message naming the input and the rule)."""
    prompt = PROMPTS[0]
    return {
        "empty": ([], GREEDY, "input 'input_ids': is empty; allowed: at least one token id"),
        "id_at_vocab": (prompt + [vocab], GREEDY,
                        f"input 'input_ids': holds id {vocab}; allowed: ids in [0, {vocab})"),
        "negative_id": (prompt + [-1], GREEDY,
                        f"input 'input_ids': holds id -1; allowed: ids in [0, {vocab})"),
        "max_length_above_limit": (
            prompt, dict(greedy=True, max_length=max_length + 1),
            f"input 'max_length': is {max_length + 1}; allowed: an integer from 2 to "
            f"{max_length} (prompt + generated ids)"),
        "temperature_zero": (prompt, dict(SAMPLED, temperature=0.0),
                             "input 'temperature': is 0; allowed: a number from 0.001 to 100 (greedy=true for the most likely id)"),
        "top_k_negative": (prompt, dict(SAMPLED, top_k=-1),
                           "input 'top_k': is -1; allowed: 0 (no filter) or a positive integer"),
        "max_new_tokens_zero": (prompt, dict(greedy=True, max_new_tokens=0),
                                "input 'max_new_tokens': is 0; allowed: an integer >= 1"),
        "seed_negative": (prompt, dict(SAMPLED, seed=-1),
                          "input 'seed': is -1; allowed: an integer in [0, 2^63)"),
        "prompt_at_max_length": (
            (prompt * max_length)[:max_length], dict(greedy=True),
            f"input 'input_ids': has {max_length} ids; allowed: fewer than max_length "
            f"({max_length})"),
    }


BAD_CASES = list(_bad(0, 0))


@pytest.fixture(scope="module")
def bad(vocab_size, llm_settings):
    return _bad(vocab_size, llm_settings.max_length)


@pytest.mark.parametrize("case_id", BAD_CASES)
def test_bad_input_over_grpc_stream(triton_server, bad, greedy_reference, case_id):
    ids, options, message = bad[case_id]
    answer = stream_llm(triton_server.grpc_url, ids, **options)
    # the error, then the stream's empty final response (as after streamed ids): an error in
    # the final response would never end a BLS caller's stream on 2.51
    assert [(result, error.message()) for result, error in answer.messages[:1]] == [(None, message)]
    assert len(answer.messages) == 2 and answer.chunks == [] and answer.finals == [True]
    good = stream_llm(triton_server.grpc_url, PROMPTS[0], stream=False, **GREEDY)
    assert good.chunks == [greedy_reference[0]]


@pytest.mark.parametrize("case_id", BAD_CASES)
def test_bad_input_over_http_llm(triton_server, bad, greedy_reference, case_id):
    ids, options, message = bad[case_id]
    with pytest.raises(InferenceServerException) as caught:
        http_llm(triton_server.http_url, ids, **options)
    assert caught.value.message() == message
    assert http_llm(triton_server.http_url, PROMPTS[0], **GREEDY) == greedy_reference[0]


# llm forwards llm_stream's input errors as its own (Triton 2.51 hands BLS callers every error
# as INTERNAL: EngineClient recognises our InvalidInput message form)
@pytest.mark.parametrize("protocol, status", [("http", "400"),
                                              ("grpc", "StatusCode.INVALID_ARGUMENT")])
def test_bad_input_over_llm_is_an_input_error(triton_server, bad, protocol, status):
    ids, options, message = bad["id_at_vocab"]
    call, url = ((http_llm, triton_server.http_url) if protocol == "http"
                 else (grpc_llm, triton_server.grpc_url))
    with pytest.raises(InferenceServerException) as caught:
        call(url, ids, **options)
    assert (caught.value.status(), caught.value.message()) == (status, message)
