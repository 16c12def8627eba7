"""HTTP and gRPC give the same tokens; the CLI tokenizes a wav file."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import soundfile as sf

from conftest import ROOT, assert_tokens_equal


def test_http_and_grpc_agree_with_reference(clips, grpc_client, http_client, reference):
    clip = clips["3s"]
    want = reference(clip.samples, clip.rate)
    assert_tokens_equal(grpc_client.tokenize(clip.samples, clip.rate), want)
    assert_tokens_equal(http_client.tokenize(clip.samples, clip.rate), want)


def test_http_error_names_the_input(http_client, clips):
    clip = clips["3s"]
    try:
        http_client.tokenize(clip.samples, 4000)
    except Exception as exc:
        assert str(exc) == ("in ensemble 'audio_tokenizer', input 'sample_rate': got 4000 Hz; "
                            "allowed: an integer from 8000 to 192000 Hz")
    else:
        raise AssertionError("4000 Hz was accepted over HTTP")
    assert len(http_client.tokenize(clip.samples, clip.rate)["merged_ids"]) > 0


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "client", "tokenize", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_tokenizes_a_stereo_wav_over_grpc_and_http(tmp_path, triton_server, clips, reference):
    clip = clips["stereo_44k"]
    wav = tmp_path / "prompt.wav"
    sf.write(wav, clip.frames, clip.rate, subtype="FLOAT")
    want = reference(clip.samples, clip.rate, clip.channels)

    out = tmp_path / "tokens.json"
    done = _run_cli(str(wav), "--url", triton_server.grpc_url, "--json", str(out))
    assert done.returncode == 0, done.stderr
    saved = json.loads(out.read_text())
    assert saved["sample_rate"] == 44100 and saved["channels"] == 2
    assert saved["vq02_codes"] == want.vq02.tolist()
    assert saved["vq06_codes"] == want.vq06.tolist()
    assert saved["merged_ids"] == want.merged_ids.tolist()
    assert saved["token_str"] == want.token_str

    done = _run_cli(str(wav), "--url", triton_server.http_url, "--protocol", "http", "--timing")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["merged_ids"] == want.merged_ids.tolist()
    assert "vq02" in done.stderr and "batch sizes" in done.stderr


def test_cli_reports_server_errors(tmp_path, triton_server):
    wav = tmp_path / "short.wav"
    sf.write(wav, np.zeros(800, np.float32), 4000)  # 0.2 s at 4 kHz: rate too low
    done = _run_cli(str(wav), "--url", triton_server.grpc_url)
    assert done.returncode == 1
    assert done.stderr.strip() == ("client: error: in ensemble 'audio_tokenizer', input "
                                   "'sample_rate': got 4000 Hz; allowed: an integer from 8000 "
                                   "to 192000 Hz")
    done = _run_cli(str(tmp_path / "missing.wav"), "--url", triton_server.grpc_url)
    assert done.returncode == 2 and "no such file" in done.stderr
