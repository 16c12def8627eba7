"""perf/chaos.py, short: 40 s of good clones beside every hostile pattern, on the session
server. The 10-minute run is the script itself (perf/RESULTS.md)."""
from __future__ import annotations

from perf.chaos import chaos


def test_a_short_chaos_run_loses_no_good_request(triton_server):
    report = chaos(triton_server.grpc_url, triton_server.http_url,
                   f"{triton_server.host}:{triton_server.metrics_port}", seconds=40,
                   good_clients=2, sample_every=1, server_pid=triton_server.process.pid)
    counts = report["counts"]
    assert report["good_lost"] == 0 and counts["good_clone as expected"] > 0, report
    assert report["unexpected"] == 0, report
    assert counts["prefill_ending_llm as expected"] >= 1 and counts["tiny_temperature as expected"] >= 1
    assert report["llm_sequences_at_end"] == 0
    assert report["passed"], report
