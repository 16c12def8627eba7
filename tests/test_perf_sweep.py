"""perf/perf_sweep.py: the input JSON builder and helpers (no server), and short real
perf_analyzer runs (gRPC and HTTP against the session's tiny server; one against a server the
sweep starts itself)."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from perf import perf_inputs as pi
from perf import perf_sweep as ps


# ------------------------------------------------------------------ input JSON (no server)

@pytest.fixture(scope="module")
def clips():
    return pi.speech_clips(1.5, count=2, seed=pi.CLIP_SEED_BASE)


def through_json(doc: dict) -> list[dict]:
    """What perf_analyzer reads: the document after a JSON round trip, decoded."""
    return pi.decode_input_data(json.loads(json.dumps(doc)))


def test_speech_clips_are_distinct_and_exact(clips):
    assert [c.seed for c in clips] == [pi.CLIP_SEED_BASE, pi.CLIP_SEED_BASE + 1]
    for clip in clips:
        assert clip.audio.dtype == np.float32 and clip.audio.ndim == 1
        assert clip.audio.size == round(1.5 * clip.rate)
    assert not np.array_equal(clips[0].audio, clips[1].audio)


@pytest.mark.parametrize("encoding", pi.ENCODINGS)
@pytest.mark.parametrize("model", ["audio_tokenizer", "preprocess"])
def test_waveform_inputs_round_trip(clips, model, encoding):
    doc = pi.input_data(model, clips, encoding=encoding)
    assert len(doc["data"]) == len(clips)
    for step, raw, clip in zip(through_json(doc), doc["data"], clips):
        assert set(step) == {"waveform", "sample_rate", "channels"}
        # the variable-length input carries its shape (without the batch dimension)
        assert raw["waveform"]["shape"] == [clip.audio.size]
        assert ("b64" in raw["waveform"]) == (encoding == "b64")
        assert step["waveform"].dtype == np.float32
        np.testing.assert_array_equal(step["waveform"], clip.audio)  # bit-exact, both encodings
        assert step["sample_rate"].dtype == np.int32 and step["sample_rate"].tolist() == [clip.rate]
        assert step["channels"].dtype == np.int32 and step["channels"].tolist() == [1]
        assert raw["sample_rate"] == {"shape": [1], "content": [clip.rate]}


def test_optional_channels_can_be_left_out(clips):
    doc = pi.input_data("audio_tokenizer", clips[:1], send_channels=False)
    assert set(doc["data"][0]) == {"waveform", "sample_rate"}


@pytest.mark.parametrize("model", ["vq02", "vq06"])
def test_member_audio_is_the_preprocessed_16k_signal(clips, model):
    from python_backends.tokenizer.preprocess import preprocess
    from python_backends.settings import TokenizerSettings

    doc = pi.input_data(model, clips)
    for step, raw, clip in zip(through_json(doc), doc["data"], clips):
        want = preprocess(clip.audio, clip.rate, TokenizerSettings(weights_dir=""))
        assert set(step) == {"audio_16k"}
        assert raw["audio_16k"]["shape"] == [want.size]
        assert step["audio_16k"].dtype == np.float32
        np.testing.assert_array_equal(step["audio_16k"], want)
        # 16 kHz: about 1.5 s of audio (trimmed, plus the fixed right padding)
        assert 0.5 * 16000 < want.size < 2.0 * 16000


@pytest.mark.parametrize("encoding", pi.ENCODINGS)
def test_token_merge_inputs_are_the_given_codes(clips, encoding):
    seen = []

    def codes(clip):
        seen.append(clip.seed)
        rng = np.random.default_rng(clip.seed)
        return rng.integers(0, 1024, 25 + clip.seed % 3), rng.integers(0, 4096, 38)

    doc = pi.input_data("token_merge", clips, codes=codes, encoding=encoding)
    assert seen == [c.seed for c in clips]
    for step, raw, clip in zip(through_json(doc), doc["data"], clips):
        vq02, vq06 = codes(clip)
        assert raw["vq02_codes"]["shape"] == [len(vq02)] and raw["vq06_codes"]["shape"] == [38]
        assert step["vq02_codes"].dtype == np.int32 and step["vq06_codes"].dtype == np.int32
        np.testing.assert_array_equal(step["vq02_codes"], vq02)
        np.testing.assert_array_equal(step["vq06_codes"], vq06)
    with pytest.raises(ValueError, match="codes"):
        pi.input_data("token_merge", clips)


def test_unknown_model_and_encoding_are_refused(clips):
    with pytest.raises(ValueError, match="unknown model"):
        pi.input_data("vq03", clips)
    with pytest.raises(ValueError, match="encoding"):
        pi.input_data("vq02", clips, encoding="hex")


def test_written_file_reads_back(tmp_path, clips):
    doc = pi.input_data("audio_tokenizer", clips[:1])
    path = pi.write_input_data(tmp_path / "sub" / "in.json", doc)
    assert json.loads(path.read_text()) == doc
    # b64 keeps the file near 4/3 of the raw float32 bytes
    assert path.stat().st_size < 1.4 * clips[0].audio.nbytes + 1000


def test_decode_checks_shapes():
    with pytest.raises(ValueError, match="shape"):
        pi.decode_step({"audio_16k": {"content": [0.0, 1.0, 2.0], "shape": [2]}})
    assert pi.decode_step({"sample_rate": [16000]})["sample_rate"].tolist() == [16000]


# ------------------------------------------------------------------ helpers (no server)

def test_resolve_urls():
    assert ps.resolve_urls("grpc", "host:9001") == {"grpc": "host:9001"}
    assert ps.resolve_urls("http", "http://host:9000/") == {"http": "host:9000"}
    assert ps.resolve_urls("both", "host") == {"grpc": "host:8001", "http": "host:8000"}
    assert ps.resolve_urls("both", grpc_url="a:1", http_url="b:2") == {"grpc": "a:1", "http": "b:2"}
    with pytest.raises(ps.SweepError, match="two"):
        ps.resolve_urls("both", "host:8001")
    with pytest.raises(ps.SweepError, match="--http-url"):
        ps.resolve_urls("http", grpc_url="a:1")


def test_argument_lists():
    assert ps.int_list("1, 2,4") == [1, 2, 4]
    assert ps.float_list("3,10,30") == [3.0, 10.0, 30.0]
    assert ps.model_list("vq02,audio_tokenizer") == ["vq02", "audio_tokenizer"]
    assert ps.parse_preferred("none") == () and ps.parse_preferred("4,8") == (4, 8)
    for bad in (lambda: ps.model_list("vq03"), lambda: ps.int_list("a"),
                lambda: ps.float_list("0")):
        with pytest.raises(ps.SweepError):
            bad()
    args = ps.finish_args(ps.build_parser().parse_args(["--url", "h:1", "--quick"]))
    assert (args.concurrency, args.clip_seconds, args.models) == ([1, 2], [3.0], ["audio_tokenizer"])
    args = ps.finish_args(ps.build_parser().parse_args(["--preset", "tiny"]))
    assert args.concurrency == [1, 2, 4, 8, 16, 32, 64] and args.clip_seconds == [3.0, 10.0, 30.0]
    with pytest.raises(ps.SweepError):
        ps.finish_args(ps.build_parser().parse_args(["--url", "h:1", "--preset", "tiny"]))
    with pytest.raises(ps.SweepError):
        ps.finish_args(ps.build_parser().parse_args([]))


def test_server_specs_one_per_combination():
    args = ps.finish_args(ps.build_parser().parse_args(
        ["--preset", "full", "--queue-delay-us", "0,2000", "--instances", "vq02=1;vq02=2"]))
    specs = ps.server_specs(args, "full")
    assert [s.label for s in specs] == ["full qd=0 inst=vq02=1", "full qd=0 inst=vq02=2",
                                        "full qd=2000 inst=vq02=1", "full qd=2000 inst=vq02=2"]
    assert specs[3].options.queue_delay_us == 2000 and specs[3].options.instance_count("vq02") == 2
    args = ps.finish_args(ps.build_parser().parse_args(["--preset", "tiny"]))
    assert [s.label for s in ps.server_specs(args, "tiny")] == ["tiny"]


def test_preferred_batch_sizes_patch_parses(tmp_path, tiny_weights):
    from build_scripts.build_repository import build, check_config

    repo = build(tiny_weights, tmp_path / "repo")
    ps.add_preferred_batch_sizes(repo, (4, 8))
    ps.add_preferred_batch_sizes(repo, (2, 4))  # replaces, never duplicates
    for model in pi.MEMBERS:
        text = (repo / model / "config.pbtxt").read_text()
        assert text.count("preferred_batch_size") == 1 and "[ 2, 4 ]" in text
        check_config(model, text)


def test_perf_analyzer_output_parsing(tmp_path):
    path = tmp_path / "pa.csv"
    path.write_text("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
                    "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
                    "p50 latency,p90 latency,p95 latency,p99 latency\n"
                    "2,41.2148,38,0,1,321,258335,1169,4,39218,60000,70000,112500\n")
    assert ps.parse_perf_csv(path) == {"throughput_infer_s": 41.2148, "p50_ms": 39.218,
                                       "p90_ms": 60.0, "p95_ms": 70.0, "p99_ms": 112.5}
    text = ("Request concurrency: 2\n"
            "  Pass [1] throughput: 3.33144 infer/sec. Avg latency: 588272 usec (std 83154 usec). \n"
            "  Pass [2] throughput: 4 infer/sec. Avg latency: 326599 usec (std 56156 usec). \n"
            "  Pass [3] throughput: 5 infer/sec. Avg latency: 407089 usec (std 26183 usec). \n"
            "  Pass [4] throughput: 4.5 infer/sec. Avg latency: 407089 usec (std 26183 usec). \n"
            "  Client: \n    Request count: 297\n    Throughput: 41.2 infer/sec\n"
            "    Avg latency: 48382 usec (standard deviation 28668 usec)\n"
            "  Server: \n    Avg request latency: 181231 usec\n")
    parsed = ps.parse_perf_stdout(text)
    assert parsed.pop("spread_pct") == pytest.approx(25.0)  # last 3 windows: 5 / 4 - 1
    assert parsed == {"avg_ms": 48.382, "measured_requests": 297, "windows": 4}


def test_window_grows_with_predicted_latency():
    args = ps.finish_args(ps.build_parser().parse_args(["--url", "h:1"]))
    # first point: one request alone (0.1 s); 6 completions at concurrency 1 → 0.6 s → the 2 s floor
    assert ps.window_for(args, 1, 0.1, None) == 2000
    assert ps.window_for(args, 1, 1.0, None) == 6000
    assert ps.window_for(args, 8, 1.0, None) == 12000  # first point: 8 requests queued behind each other
    # saturated: latency 0.8 s at 4 → 1.6 s at 8, 1.5 latencies → 2.4 s
    assert ps.window_for(args, 8, 0.1, (4, 0.8)) == 2400
    assert ps.window_for(args, 64, 0.1, (32, 40.0)) == 30000  # capped by --max-window-ms


def test_breakdown_of_statistics():
    def snap(success, inferences, executions, queue_ms, compute_ms, busy_ms):
        ns = 1_000_000
        return {"vq02": {"success_count": success, "success_ns": (queue_ms + compute_ms) * ns,
                         "fail_count": 0, "inference_count": inferences,
                         "execution_count": executions, "queue_ns": queue_ms * ns,
                         "compute_input_ns": 0, "compute_infer_ns": compute_ms * ns,
                         "compute_output_ns": 0, "batches": {1: (executions, busy_ms * ns)}}}

    parts = ps.breakdown(snap(10, 10, 10, 50, 500, 500), snap(30, 30, 15, 250, 2500, 1500), 2.0)
    v = parts["vq02"]
    assert v["requests"] == 20 and v["failed"] == 0
    assert v["queue_ms"] == pytest.approx(10.0) and v["compute_ms"] == pytest.approx(100.0)
    assert v["request_ms"] == pytest.approx(110.0)
    assert v["avg_batch"] == pytest.approx(4.0) and v["util"] == pytest.approx(0.5)
    assert math.isnan(ps.breakdown(snap(1, 1, 1, 0, 0, 0), snap(1, 1, 1, 0, 0, 0), 1.0)["vq02"]["queue_ms"])


def test_table_and_plots_from_rows(tmp_path):
    rows = []
    for clip in (3, 10):
        for c in (1, 2, 4):
            rows.append({**{k: "" for k in ps.COLUMNS}, "label": "tiny", "weights": "tiny",
                         "model": "audio_tokenizer", "protocol": "grpc", "clip_s": str(clip),
                         "concurrency": str(c), "throughput_infer_s": str(c * 10.0 / clip),
                         "p50_ms": str(100.0 * clip), "p90_ms": "1", "p95_ms": "1",
                         "p99_ms": str(150.0 * clip * c), "spread_pct": "12", "vq02_avg_batch": "1.5"})
    rows.append({**rows[0], "concurrency": "8", "error": "perf_analyzer timed out after 60 s"})
    text = ps.table(rows)
    assert "audio_tokenizer" in text and "timed out" in text and "1.5" in text
    paths = ps.plot(rows, tmp_path / "sweep", "test")
    assert [p.name for p in paths] == ["sweep_throughput.png", "sweep_latency.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    series, varying = ps.group_series(rows)
    assert varying == ["clip_s"] and set(series) == {"3 s", "10 s"}
    assert [r["concurrency"] for r in series["3 s"]] == ["1", "2", "4"]  # the failed point is left out


# ------------------------------------------------------------------ real perf_analyzer runs

def run_sweep(*args, timeout=600):
    done = subprocess.run([sys.executable, str(ROOT / "perf" / "perf_sweep.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


def read_csv(path):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def check_rows(rows):
    for row in rows:
        assert row["error"] == "", row
        assert float(row["throughput_infer_s"]) > 0
        p50, p90, p95, p99 = (float(row[f"p{p}_ms"]) for p in (50, 90, 95, 99))
        assert 0 < p50 <= p90 <= p95 <= p99
        assert int(row["server_requests"]) > 0 and int(row["server_failed"]) == 0


def test_quick_sweep_grpc_and_http(triton_server, tmp_path):
    out = tmp_path / "quick"
    done = run_sweep("--grpc-url", triton_server.grpc_url, "--http-url", triton_server.http_url,
                     "--protocol", "both", "--quick", "--models", "audio_tokenizer",
                     "--concurrency", "1,2", "--clip-seconds", "3", "--label", "test server",
                     "--out", str(out))
    columns, rows = read_csv(out.with_suffix(".csv"))
    assert columns == ps.COLUMNS
    assert sorted((r["protocol"], r["concurrency"]) for r in rows) == [
        ("grpc", "1"), ("grpc", "2"), ("http", "1"), ("http", "2")]
    check_rows(rows)
    for row in rows:
        assert (row["label"], row["model"], row["clip_s"]) == ("test server", "audio_tokenizer", "3")
        # the ensemble run fills every member's breakdown, read back from the server's config
        for member in pi.MEMBERS:
            assert float(row[f"{member}_avg_batch"]) >= 1.0
            assert float(row[f"{member}_compute_ms"]) > 0
        assert row["queue_delay_us"] == "50000" and row["max_batch_size"] == "16"
        assert "vq02=1" in row["instances"]
    for name in ("quick_throughput.png", "quick_latency.png", "quick.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert "infer/s" in done.stdout and "test server" in done.stdout


def test_sweep_starts_its_own_server(tmp_path, tiny_weights):
    out = tmp_path / "own"
    run_sweep("--preset", "tiny", "--quick", "--models", "vq02", "--protocol", "grpc",
              "--concurrency", "1", "--queue-delay-us", "0", "--preferred-batch-sizes", "2",
              "--repositories", str(tmp_path / "repos"), "--out", str(out))
    _, rows = read_csv(out.with_suffix(".csv"))
    assert len(rows) == 1
    check_rows(rows)
    row = rows[0]
    assert (row["label"], row["weights"], row["model"]) == ("tiny qd=0 pref=2", "tiny", "vq02")
    assert row["queue_delay_us"] == "0" and row["preferred_batch_sizes"] == "2"
    assert float(row["vq02_avg_batch"]) == 1.0 and row["vq06_avg_batch"] == ""


def test_csv_sink_appends(tmp_path):
    path = tmp_path / "x.csv"
    ps.CsvSink(path).add({"label": "a", "throughput_infer_s": 1.23456})
    sink = ps.CsvSink(path, append=True)
    sink.add({"label": "b"})
    assert [r["label"] for r in sink.rows] == ["a", "b"]
    assert [r["label"] for r in ps.read_rows([path])] == ["a", "b"]
    assert ps.read_rows([path])[0]["throughput_infer_s"] == "1.235"
    assert [r["label"] for r in ps.CsvSink(path).rows] == []  # without append: a new file
    path.write_text("other,columns\n")
    with pytest.raises(ps.SweepError):
        ps.CsvSink(path, append=True)


def test_single_server_label_names_non_default_knobs():
    args = ps.finish_args(ps.build_parser().parse_args(
        ["--preset", "full", "--instances", "vq02=2", "--num-threads", "1"]))
    assert [s.label for s in ps.server_specs(args, "full")] == ["full inst=vq02=2 thr=1"]
