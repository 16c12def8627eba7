"""perf/saturation.py, short: a 20 s ramp + overload run against the session server's
`audio_tokenizer` and a 25 s one against `clone`, and the parts the verdict rests on (failure
counting, memory growth, the server's process tree, loopback only). The 10-minute run is the
script itself."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TEST_MAX_BATCH_SIZE, TEST_MAX_TEXT_CHARS, TEST_QUEUE_DELAY_US
from perf import saturation as sat

RATE_ERROR = ("InferenceServerException: in ensemble 'audio_tokenizer', input 'sample_rate': "
              "got 4000 Hz; allowed: an integer from 8000 to 192000 Hz")


@pytest.fixture(scope="module")
def requests():
    return sat.INPUT_BUILDERS["audio_tokenizer"](1.0)[:2]


def test_short_run_at_and_above_saturation_passes(triton_server, requests):
    report = sat.saturate(triton_server.grpc_url, "grpc", "audio_tokenizer", requests, seconds=20,
                          ramp=(1, 2, 4), ramp_seconds=2, overload=2, sample_every=1,
                          max_growth_pct=10)
    assert [p.concurrency for p in report.ramp][:2] == [1, 2]
    assert report.saturation_concurrency in (1, 2, 4)
    assert report.main.concurrency == 2 * report.saturation_concurrency
    assert report.failed == 0 and report.main.count > 0
    summary = report.main.summary()
    assert summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    assert len(report.memory) >= 8 and all(mib > 100 for _, mib in report.memory)
    assert report.growth_pct is not None and report.passed, report.to_json()
    assert json.loads(json.dumps(report.to_json()))["passed"] is True


@pytest.fixture(scope="module")
def clone_requests():
    return sat.INPUT_BUILDERS["clone"](1.0)[:3]


def test_clone_requests_carry_a_prompt_its_transcript_and_a_length_limit(clone_requests):
    for request in clone_requests:
        assert set(request) == {"waveform", "sample_rate", "channels", "prompt_text",
                                "target_text", "max_new_tokens", "seed"}
        assert request["waveform"].dtype == np.float32
        assert request["waveform"].shape == (1, int(request["sample_rate"][0, 0]))  # 1 s
        assert request["prompt_text"].dtype == object and request["prompt_text"][0, 0].strip()
    assert [int(r["max_new_tokens"][0, 0]) for r in clone_requests] == list(sat.CLONE_MAX_NEW_TOKENS)
    assert len({r["prompt_text"][0, 0] for r in clone_requests}) == 3  # three voices


@pytest.fixture(scope="module")
def clone_server(tmp_path_factory, tiny_weights, tiny_editx):
    """A server of its own (the session's batching): the session server must survive whatever
    this load does to it."""
    from build_scripts.build_repository import RepositoryOptions, build
    from build_scripts.serve import TritonServer

    root = tmp_path_factory.mktemp("clone_saturation")
    options = RepositoryOptions(max_batch_size=TEST_MAX_BATCH_SIZE, queue_delay_us=TEST_QUEUE_DELAY_US,
                                max_text_chars=TEST_MAX_TEXT_CHARS)
    repo = build(tiny_weights, root / "repo", options, editx=tiny_editx)
    with TritonServer(repo, address="127.0.0.1", log_file=root / "server.log") as server:
        yield server


def test_short_clone_run_above_saturation_passes(clone_server, clone_requests):
    """4 clones in flight (3 voices) for 25 s: above saturation on any machine these tests run
    on (a clone keeps a CPU core busy; the ramp of the audio_tokenizer test is not repeated)."""
    report = sat.saturate(clone_server.grpc_url, "grpc", "clone", clone_requests, seconds=25,
                          concurrency=4, sample_every=1, max_growth_pct=10,
                          server_pid=clone_server.process.pid)
    assert report.failed == 0, report.to_json()
    assert report.main.count > 0 and len(report.memory) >= 8
    assert report.growth_pct is not None and report.passed, report.to_json()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_failed_requests_are_counted_by_message_and_fail_the_verdict(triton_server, requests,
                                                                     protocol):
    bad = [{**r, "sample_rate": np.array([[4000]], np.int32)} for r in requests]
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    report = sat.saturate(url, protocol, "audio_tokenizer", bad, seconds=2, concurrency=2,
                          sample_every=0.5, server_pid=triton_server.process.pid)
    assert report.main.count > 0
    assert report.main.failures == {RATE_ERROR: report.main.count}
    assert report.failed == report.main.count and not report.passed


def test_the_server_is_found_by_its_port_with_its_stubs(triton_server):
    pid = sat.find_server(triton_server.grpc_port)
    assert pid == triton_server.process.pid == sat.find_server(triton_server.metrics_port)
    with pytest.raises(SystemExit, match="pass --server-pid"):  # HTTP: serve.py's guard listens
        sat.find_server(triton_server.http_port)
    tree = sat.process_tree(pid)
    stubs = [p for p in tree if p != pid]
    assert len(stubs) >= 4  # one Python backend stub per model instance
    assert sat.server_memory_mib(pid) > sum(sat.memory_kib(p) for p in stubs) / 1024


def test_growth_compares_the_last_quarter_with_the_second():
    assert sat.growth_pct([500, 100, 100, 100, 105, 105, 110, 110]) == pytest.approx(10.0)
    assert sat.growth_pct([100.0] * 12) == 0.0
    assert sat.growth_pct([100.0] * 7) is None
    assert sat.growth_pct([2000.0] * 2 + [0.0] * 10) is None  # the server died


@pytest.mark.parametrize("url", ["10.1.2.3:8001", "8.8.8.8:8000"])
def test_only_loopback_servers_are_driven(url):
    with pytest.raises(SystemExit, match="is not a loopback address"):
        sat.loopback_only(url)
    sat.loopback_only("localhost:8001")
    sat.loopback_only("127.0.0.1:8000")
