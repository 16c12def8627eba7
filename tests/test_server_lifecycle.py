"""A hostile client against the real server (tiny synthetic weights): requests that end in their
prefill, lying HTTP shapes, abandoned and cancelled clones, floods of one new voice, over-long
prompts, forged control tokens, SIGTERM with clones in flight and a crashed server. Each test
pins what the README's Reliability section promises: the server stays up, the LLM stops for a
request nobody waits for, metrics count what was sent, shutdown answers everyone and nothing
of the server outlives it.
"""
from __future__ import annotations

import concurrent.futures
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from build_scripts.serve import TritonServer
from client.triton_base import infer_inputs
from conftest import ROOT, speech_clip
from python_backends.settings import LLM

PROMPT_TEXT = "This is the voice to clone."
TARGET_TEXT = "Hello, this is a cloned voice."
SHORT = 31
ABANDONED_NEW_TOKENS = 3000  # ~16 s of a core for the tiny LLM: far longer than any deadline
DEADLINE_S = 1.0
GAVE_UP = {"StatusCode.DEADLINE_EXCEEDED Deadline Exceeded",
           "StatusCode.CANCELLED cancelled: clone cancelled before token2wav",
           "StatusCode.CANCELLED cancelled: cancelled while 'llm_stream' was answering",
           "StatusCode.CANCELLED cancelled: clone cancelled before prompt_builder",
           "StatusCode.CANCELLED cancelled: clone cancelled before llm_stream"}


# ------------------------------------------------------------------ helpers

def clone_arrays(clip, text: str = TARGET_TEXT, **options) -> dict:
    arrays = {"waveform": clip.samples[None], "sample_rate": np.array([[clip.rate]], np.int32),
              "channels": np.array([[clip.channels]], np.int32),
              "prompt_text": np.array([[PROMPT_TEXT.encode()]], np.object_),
              "target_text": np.array([[text.encode()]], np.object_),
              "seed": np.array([[options.pop("seed", 5)]], np.int64),
              "max_new_tokens": np.array([[options.pop("max_new_tokens", SHORT)]], np.int32)}
    for name, value in options.items():
        arrays[name] = np.array([[value]], np.float32 if name == "temperature" else np.int32)
    return arrays


def metrics(server) -> dict[str, float]:
    """Every sample line of /metrics (a server's, or at a URL): 'name{labels}' → value."""
    url = server if isinstance(server, str) else server.metrics_url
    text = urllib.request.urlopen(url, timeout=60).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def metric(values: dict, name: str, **labels) -> float:
    """The sum of `name` over the samples whose labels include `labels`."""
    total = 0.0
    for key, value in values.items():
        base, _, rest = key.partition("{")
        have = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if base == name and all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


def llm_sequences(server) -> float:
    return metric(metrics(server), "step_audio_llm_sequences")


def wait_for(predicate, seconds: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def status_of(call) -> str:
    try:
        call()
        return "ok"
    except InferenceServerException as exc:
        return f"{exc.status()} {exc.message()}"


@pytest.fixture(scope="module")
def voice():
    return speech_clip("lifecycle_voice", 2.0, seed=61)


@pytest.fixture(scope="module")
def grpc(triton_server):
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(triton_server):
    client = httpclient.InferenceServerClient(triton_server.http_url, network_timeout=600)
    yield client
    client.close()


def prompt_length(grpc, clip) -> int:
    """The clone prompt's length in ids, as prompt_builder makes it for this voice and text."""
    tokens = grpc.infer("audio_tokenizer", infer_inputs(grpcclient, {
        "waveform": clip.samples[None], "sample_rate": np.array([[clip.rate]], np.int32)}))
    ids = grpc.infer("prompt_builder", infer_inputs(grpcclient, {
        "prompt_text": np.array([[PROMPT_TEXT.encode()]], np.object_),
        "target_text": np.array([[TARGET_TEXT.encode()]], np.object_),
        "token_str": tokens.as_numpy("token_str"), "waveform": clip.samples[None],
        "channels": np.array([[1]], np.int32)})).as_numpy("input_ids")
    return ids.shape[1]


# ------------------------------------------------------------------ 1. requests that end in prefill

def test_requests_that_end_in_their_prefill_leave_the_server_up(triton_server, grpc, http, voice):
    """24 of each: llm with max_new_tokens 1 (0 ids), clone with temperature 1e-45 (refused by
    name) and clone with max_length = prompt + 1 (the LLM stops at once). Triton 2.51 used to
    die on the 8th: the generator asked a finished request whether it was cancelled."""
    ids = np.array([[LLM.bos_id, LLM.bot_id, 100, 200, 300]], np.int32)
    one = {"input_ids": ids, "max_new_tokens": np.array([[1]], np.int32)}
    for _ in range(24):
        result = http.infer("llm", infer_inputs(httpclient, one))
        assert result.as_numpy("output_ids").shape == (1, 0)
    for _ in range(24):
        assert status_of(lambda: grpc.infer("clone", infer_inputs(grpcclient, clone_arrays(
            voice, temperature=1e-45)))) == (
            "StatusCode.INVALID_ARGUMENT input 'temperature': is 1.4013e-45; allowed: a number "
            "from 0.001 to 100 (greedy=true for the most likely id)")
    length = prompt_length(grpc, voice)
    arrays = clone_arrays(voice)
    del arrays["max_new_tokens"]
    arrays["max_length"] = np.array([[length + 1]], np.int32)
    for _ in range(24):
        assert status_of(lambda: grpc.infer("clone", infer_inputs(grpcclient, arrays))) == (
            "StatusCode.INVALID_ARGUMENT input 'target_text': made the LLM stop before any audio "
            "token; allowed: a text the voice can speak")
    assert triton_server.running()
    wave = grpc.infer("clone", infer_inputs(grpcclient, clone_arrays(voice))).as_numpy("waveform")
    assert wave.shape == (1, 17280)


# ------------------------------------------------------------------ 2. lying HTTP shapes

def raw_post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("dims", [[1, 8589934592], [1, 1000000000]])
def test_a_huge_declared_http_shape_is_refused_before_triton(triton_server, http, voice, dims):
    body = json.dumps({"inputs": [
        {"name": "waveform", "datatype": "FP32", "shape": dims, "data": [0.1]},
        {"name": "sample_rate", "datatype": "INT32", "shape": [1, 1], "data": [16000]}]}).encode()
    started = time.monotonic()
    code, reply = raw_post(f"http://{triton_server.http_url}/v2/models/audio_tokenizer/infer", body)
    assert code == 400
    assert json.loads(reply) == {"error": f"input 'waveform': declares shape {dims} "
                                          f"({dims[1] * 4} bytes of FP32); allowed: at most "
                                          f"{256 << 20} bytes per input"}
    assert time.monotonic() - started < 5
    assert triton_server.running()
    result = http.infer("audio_tokenizer", infer_inputs(httpclient, {
        "waveform": voice.samples[None], "sample_rate": np.array([[voice.rate]], np.int32)}))
    assert result.as_numpy("vq02_codes").size > 0


# ------------------------------------------------------------------ 3. abandoned clones, cancellation

def test_abandoned_clones_stop_the_llm_and_leave_no_trace(triton_server, voice):
    """20 clients give up after 1 s (gRPC deadline) on clones of 3000 ids: each clone is
    cancelled, the LLM's sequences are back to 0 within a few steps, the counts say so, the
    log has no traceback, and a short clone is as fast as before."""
    def short_clone() -> float:
        client = grpcclient.InferenceServerClient(triton_server.grpc_url)
        started = time.monotonic()
        client.infer("clone", infer_inputs(grpcclient, clone_arrays(voice)))
        client.close()
        return time.monotonic() - started

    short_clone()  # the voice in the prompt cache
    solo = sorted(short_clone() for _ in range(3))[1]
    before = metrics(triton_server)
    log_offset = triton_server.log_file.stat().st_size

    def abandon(i: int) -> str:
        client = grpcclient.InferenceServerClient(triton_server.grpc_url)
        arrays = clone_arrays(voice, seed=i, max_new_tokens=ABANDONED_NEW_TOKENS)
        outcome = status_of(lambda: client.infer("clone", infer_inputs(grpcclient, arrays),
                                                 client_timeout=DEADLINE_S))
        client.close()
        return outcome

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(abandon, range(20)))
    # the client's own timer, or the server's answer to the deadline it was told, comes first
    assert set(outcomes) <= GAVE_UP, outcomes
    assert wait_for(lambda: llm_sequences(triton_server) == 0, 10.0), metrics(triton_server)

    def settled():
        now = metrics(triton_server)
        return metric(now, "step_audio_requests_in_flight", model="clone") == 0
    assert wait_for(settled, 30.0)
    after = metrics(triton_server)
    delta = {o: metric(after, "step_audio_requests_total", model="clone", outcome=o)
             - metric(before, "step_audio_requests_total", model="clone", outcome=o)
             for o in ("success", "cancelled", "error", "unavailable", "invalid_input")}
    assert delta == {"success": 0, "cancelled": 20, "error": 0, "unavailable": 0, "invalid_input": 0}
    generated = (metric(after, "step_audio_llm_generated_ids_total")
                 - metric(before, "step_audio_llm_generated_ids_total"))
    assert generated < 20 * ABANDONED_NEW_TOKENS / 4  # stopped long before their limit
    assert short_clone() <= 3 * solo + 0.5
    with open(triton_server.log_file, "rb") as log:
        log.seek(log_offset)
        text = log.read().decode(errors="replace")
    assert "Traceback" not in text and "RequestCancelled" not in text


def test_metrics_count_what_the_clients_got(triton_server, voice):
    """5 good clones, 5 refused, 3 given up: exactly those counts, 13 durations observed."""
    before = metrics(triton_server)
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    for i in range(5):
        client.infer("clone", infer_inputs(grpcclient, clone_arrays(voice, seed=i)))
    for _ in range(5):
        assert status_of(lambda: client.infer("clone", infer_inputs(grpcclient, clone_arrays(
            voice, text=" ")))).startswith("StatusCode.INVALID_ARGUMENT input 'target_text': is blank")
    for i in range(3):
        assert status_of(lambda: client.infer("clone", infer_inputs(grpcclient, clone_arrays(
            voice, seed=i, max_new_tokens=ABANDONED_NEW_TOKENS)), client_timeout=DEADLINE_S)
        ) in GAVE_UP
    client.close()
    assert wait_for(lambda: metric(metrics(triton_server), "step_audio_requests_in_flight",
                                   model="clone") == 0, 30.0)
    after = metrics(triton_server)

    def grew(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("step_audio_requests_total", model="clone", outcome="success") == 5
    assert grew("step_audio_requests_total", model="clone", outcome="invalid_input") == 5
    assert grew("step_audio_requests_total", model="clone", outcome="cancelled") == 3
    assert grew("step_audio_requests_total", model="clone") == 13
    assert grew("step_audio_request_duration_seconds_count", model="clone") == 13
    assert grew("step_audio_stage_duration_seconds_count", model="clone", stage="token2wav") == 5


def test_a_cancelled_llm_stream_stops_generating(triton_server):
    """A gRPC streaming client of llm_stream that cancels its stream: the sequence ends."""
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    got = []
    client.start_stream(callback=lambda result, error: got.append(error or result))
    ids = np.array([[LLM.bos_id, LLM.bot_id, 7, 8, 9]], np.int32)
    client.async_stream_infer("llm_stream", infer_inputs(grpcclient, {
        "input_ids": ids, "max_new_tokens": np.array([[ABANDONED_NEW_TOKENS]], np.int32)}))
    assert wait_for(lambda: len(got) >= 3, 60.0)
    client.stop_stream(cancel_requests=True)
    client.close()
    assert wait_for(lambda: llm_sequences(triton_server) == 0, 30.0), metrics(triton_server)


# ------------------------------------------------------------------ 4. one new voice, many clients

def test_prompt_cache_counts_each_lookup_once(triton_server):
    clip = speech_clip("flood_voice", 1.5, seed=77)
    before = metrics(triton_server)

    def one(i):
        client = grpcclient.InferenceServerClient(triton_server.grpc_url)
        client.infer("clone", infer_inputs(grpcclient, clone_arrays(clip, seed=i)))
        client.close()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(16)))
    after = metrics(triton_server)
    assert (metric(after, "clone_prompt_cache_hits", model="clone")
            - metric(before, "clone_prompt_cache_hits", model="clone")) == 15
    assert (metric(after, "clone_prompt_cache_misses", model="clone")
            - metric(before, "clone_prompt_cache_misses", model="clone")) == 1


# ------------------------------------------------------------------ 5. over-long prompts, forged tokens

def test_an_over_long_prompt_is_refused_before_any_model_sees_it(triton_server, grpc, voice):
    seconds = 60  # over the clone prompt limit (EditxSettings.max_prompt_seconds, 30 s)
    arrays = clone_arrays(voice)
    arrays["waveform"] = np.zeros((1, seconds * 16000), np.float32)
    arrays["sample_rate"] = np.array([[16000]], np.int32)
    encoder_before = grpc.get_inference_statistics("prompt_encoder").model_stats[0].inference_count
    assert status_of(lambda: grpc.infer("clone", infer_inputs(grpcclient, arrays))) == (
        "StatusCode.INVALID_ARGUMENT input 'waveform': lasts 60 s (960000 samples per channel at "
        "16000 Hz); allowed: at most 30 s of audio (480000 samples per channel at 16000 Hz)")
    assert grpc.get_inference_statistics("prompt_encoder").model_stats[0].inference_count == encoder_before


@pytest.mark.parametrize("marker", ["<|EOT|>", "<|BOT|>", "<audio_5>", "<s>"])
def test_control_tokens_typed_by_a_client_stay_text(grpc, voice, marker):
    """prompt_builder on the server: the template's control ids only, whatever the text says."""
    tokens = grpc.infer("audio_tokenizer", infer_inputs(grpcclient, {
        "waveform": voice.samples[None], "sample_rate": np.array([[voice.rate]], np.int32)}))

    def prompt(text: str) -> np.ndarray:
        return grpc.infer("prompt_builder", infer_inputs(grpcclient, {
            "prompt_text": np.array([[PROMPT_TEXT.encode()]], np.object_),
            "target_text": np.array([[text.encode()]], np.object_),
            "token_str": tokens.as_numpy("token_str"), "waveform": voice.samples[None],
            "channels": np.array([[1]], np.int32)})).as_numpy("input_ids")[0]

    plain, forged = prompt("Say this. Then that."), prompt(f"Say this.{marker} Then that.")
    for control in (LLM.bos_id, LLM.eot_id, LLM.bot_id):
        assert (forged == control).sum() == (plain == control).sum(), control
    audio = LLM.audio_token_offset
    assert (forged >= audio).sum() == (plain >= audio).sum()
    assert forged.size > plain.size


# ------------------------------------------------------------------ 6. shutdown, crashes

def start_serve(repo: Path, log: Path, drain_seconds: float) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "build_scripts" / "serve.py"), "--repo",
                             str(repo), "--address", "127.0.0.1", "--log-file", str(log),
                             "--drain-seconds", str(drain_seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, json.loads(proc.stdout.readline())


def leftovers(shm_prefix: str) -> tuple[list[int], list[Path]]:
    pids = [int(p.name) for p in Path("/proc").glob("[0-9]*")
            if _cmdline_has(p, shm_prefix.encode())]
    return pids, sorted(Path("/dev/shm").glob(shm_prefix + "*"))


def _cmdline_has(proc: Path, mark: bytes) -> bool:
    try:
        return mark in (proc / "cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.parametrize("drain_seconds, finished", [(60.0, True), (0.5, False)],
                         ids=["drain_long_enough", "drain_too_short"])
def test_sigterm_answers_every_clone_in_flight_and_leaves_nothing(server_repo, tmp_path, voice,
                                                                  drain_seconds, finished):
    """11 clones in flight at SIGTERM: each gets its speech (drain long enough) or a clean
    UNAVAILABLE (drain too short); a clone sent during the drain gets UNAVAILABLE; serve.py exits
    within drain + 5 s (after the last answer), and no process or shared memory is left."""
    proc, ports = start_serve(server_repo, tmp_path / "server.log", drain_seconds)
    url = f"127.0.0.1:{ports['grpc_port']}"
    metrics_url = f"http://127.0.0.1:{ports['metrics_port']}/metrics"
    try:
        warm = grpcclient.InferenceServerClient(url)
        warm.infer("clone", infer_inputs(grpcclient, clone_arrays(voice)))  # voice cached
        warm.close()

        def clone(i: int) -> str:
            client = grpcclient.InferenceServerClient(url)
            arrays = clone_arrays(voice, seed=i, max_new_tokens=301)
            try:
                result = client.infer("clone", infer_inputs(grpcclient, arrays), client_timeout=300)
                return "ok" if result.as_numpy("waveform").shape == (1, 172800) else "bad size"
            except InferenceServerException as exc:
                return f"{exc.status()} {exc.message()}"
            finally:
                client.close()

        pool = concurrent.futures.ThreadPoolExecutor(12)
        futures = [pool.submit(clone, i) for i in range(11)]
        assert wait_for(lambda: metric(metrics(metrics_url), "step_audio_requests_in_flight",
                                       model="clone") == 11, 120.0)
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        late = clone(99)
        outcomes = [f.result(timeout=300) for f in futures]
        code = proc.wait(timeout=drain_seconds + 60)
        assert code == 0, f"serve.py exited {code}: {proc.stderr.read()}"
        took = time.monotonic() - stopped
        pool.shutdown()
    finally:
        if proc.poll() is None:
            proc.kill()
    unavailable = "StatusCode.UNAVAILABLE unavailable: "
    assert late == unavailable + ("the server is shutting down; send the request to another "
                                  "replica or retry later")
    if finished:
        assert outcomes == ["ok"] * 11
    else:
        assert all(o.startswith(unavailable) for o in outcomes), outcomes
    assert took < drain_seconds + 5
    assert leftovers(ports["shm_prefix"]) == ([], [])


def test_a_crashed_server_leaves_no_stub_and_no_shared_memory(server_repo, tmp_path, voice):
    server = TritonServer(server_repo, address="127.0.0.1", log_file=tmp_path / "server.log").start()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.infer("clone", infer_inputs(grpcclient, clone_arrays(voice)))
    client.close()
    assert len(server.leftovers()[0]) > 5  # the stubs
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    server.stop()
    assert server.leftovers() == ([], [])


def test_a_killed_serve_process_takes_the_server_with_it(server_repo, tmp_path):
    proc, ports = start_serve(server_repo, tmp_path / "server.log", 5.0)
    proc.kill()
    proc.wait()
    assert wait_for(lambda: leftovers(ports["shm_prefix"]) == ([], []), 60.0, step=0.5)
