"""Shared fixtures. Server tests use ONE real tritonserver per session, started on a model
repository built from tiny synthetic weights (both built once into build/)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"
TEST_REPO = BUILD / "test_model_repository"
TEST_MAX_AUDIO_SECONDS = 40.0
# long enough that 16 concurrent requests certainly meet in the dynamic batcher
TEST_QUEUE_DELAY_US = 50_000
TEST_MAX_BATCH_SIZE = 16
TEST_MAX_TEXT_CHARS = 200


# ------------------------------------------------------------------ weights, repository, server

@pytest.fixture(scope="module")
def torch_one_thread():
    """torch on one thread for a module's tests (the machine's two cores are shared), restored
    afterwards. Use with `pytestmark = pytest.mark.usefixtures("torch_one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Step1 prompts shared by the LLM tests: text ids, audio ids (>= 65536) and the specials mixed
STEP1_PROMPTS = [
    [1, 4, 100, 200, 65541, 66536, 3, 4, 77],
    [1, 4, 9, 70655, 12],
    [1, 4] + list(range(65600, 65614)) + [3, 4, 5],
    [1, 4, 5000, 3, 4, 6000, 7000, 65536],
    [2] * 3 + [65537, 65538],
]


@pytest.fixture(scope="session")
def tiny_step1_dir(tmp_path_factory) -> Path:
    """A tiny synthetic Step1 checkpoint (seed 0), written once per session."""
    from build_scripts.synthetic.step1_checkpoint import write_step1_checkpoint

    out = tmp_path_factory.mktemp("step1_tiny")
    write_step1_checkpoint(out, "tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def step1(tiny_step1_dir):
    """That checkpoint loaded in float32 on the CPU (read-only for the tests)."""
    from python_backends.llm.step1_model import load_step1

    return load_step1(tiny_step1_dir)


@pytest.fixture(scope="session")
def ref_weights(tiny_step1_dir):
    """That checkpoint's tensors for the plain reference (python_backends/llm/reference.py)."""
    from python_backends.llm.reference import reference_weights

    return reference_weights(tiny_step1_dir)


@pytest.fixture(scope="session")
def tiny_weights() -> Path:
    from build_scripts.make_synthetic_weights import build

    return build("tiny", BUILD / "weights" / "tiny")


@pytest.fixture(scope="session")
def tiny_editx() -> Path:
    from build_scripts.make_synthetic_editx import build

    return build("tiny", BUILD / "weights" / "tiny-editx")


@pytest.fixture(scope="session")
def server_repo(tiny_weights, tiny_editx) -> Path:
    """The tokenizer and the clone stages (LLM, decoder, clone entry points) in one repository."""
    from build_scripts.build_repository import RepositoryOptions, build

    options = RepositoryOptions(max_batch_size=TEST_MAX_BATCH_SIZE,
                                queue_delay_us=TEST_QUEUE_DELAY_US,
                                max_audio_seconds=TEST_MAX_AUDIO_SECONDS,
                                max_text_chars=TEST_MAX_TEXT_CHARS,
                                # fp32 throughout: the server's ids are compared with fp32 references
                                llm_dtype="float32")
    return build(tiny_weights, TEST_REPO, options, editx=tiny_editx)


def repository_settings(repo: Path, model: str = "vq02"):
    """The TokenizerSettings a built repository's model config carries."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from python_backends.settings import TokenizerSettings

    config = text_format.Parse((repo / model / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    return TokenizerSettings.from_json(config.parameters["tokenizer_settings"].string_value)


@pytest.fixture(scope="session")
def server_settings(server_repo):
    return repository_settings(server_repo)


@pytest.fixture(scope="session")
def triton_server(server_repo):
    from build_scripts.serve import TritonServer

    log = BUILD / "test_logs" / f"tritonserver.{os.getpid()}.log"  # one per pytest process
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    with TritonServer(server_repo, address="127.0.0.1", log_file=log) as server:
        yield server


@pytest.fixture(scope="session")
def grpc_client(triton_server):
    from client import AudioTokenizerClient

    with AudioTokenizerClient(triton_server.grpc_url, "grpc") as client:
        yield client


@pytest.fixture(scope="session")
def http_client(triton_server):
    from client import AudioTokenizerClient

    with AudioTokenizerClient(triton_server.http_url, "http") as client:
        yield client


@pytest.fixture(scope="session")
def reference(server_settings):
    """The oracle, with exactly the settings the server's models were built with."""
    from python_backends.tokenizer.reference import ReferenceTokenizer

    return ReferenceTokenizer(server_settings)


# ------------------------------------------------------------------ test speech

def resample_to(audio: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate, new_rate)
    return resample_poly(audio, new_rate // g, rate // g).astype(np.float32)


class Clip:
    """Test audio as a client sends it: interleaved float32 samples, rate, channel count."""

    def __init__(self, name: str, samples: np.ndarray, rate: int, channels: int = 1):
        self.name, self.samples, self.rate, self.channels = name, samples, rate, channels

    @property
    def frames(self) -> np.ndarray:
        """[N, channels], as soundfile reads and writes it."""
        return self.samples.reshape(-1, self.channels)

    def __repr__(self) -> str:
        return f"Clip({self.name}, {self.samples.size // self.channels / self.rate:.2f} s)"


def speech_clip(name: str, seconds: float, seed: int, rate: int | None = None) -> Clip:
    from build_scripts.espeak_clips import speech_of_duration

    audio, native = speech_of_duration(seconds, seed=seed)
    if rate and rate != native:
        audio = resample_to(audio, native, rate)
    return Clip(name, np.ascontiguousarray(audio, np.float32), rate or native)


def stereo_clip(name: str, seconds: float, seed: int, rate: int) -> Clip:
    """Two different voices on the two channels, so the mix-down matters."""
    left = speech_clip(name, seconds, seed, rate).samples
    right = 0.6 * speech_clip(name, seconds, seed + 1, rate).samples
    return Clip(name, np.stack([left, right], axis=1).reshape(-1).astype(np.float32), rate, 2)


@pytest.fixture(scope="session")
def clips() -> dict[str, Clip]:
    """The parity set: espeak clips (seeds 0..9; the synthetic weights were fitted on 100+)."""
    return {c.name: c for c in (
        speech_clip("0.5s", 0.5, seed=1),
        speech_clip("3s", 3.0, seed=2),
        speech_clip("10s", 10.0, seed=3),
        speech_clip("31s", 31.0, seed=4),
        stereo_clip("stereo_44k", 4.0, seed=5, rate=44100),
        speech_clip("48k", 5.0, seed=7, rate=48000),
    )}


def assert_tokens_equal(got: dict, want) -> None:
    """`got`: a client result; `want`: python_backends AudioTokens (from the reference)."""
    np.testing.assert_array_equal(got["vq02_codes"], want.vq02)
    np.testing.assert_array_equal(got["vq06_codes"], want.vq06)
    np.testing.assert_array_equal(got["merged_ids"], want.merged_ids)
    assert got["token_str"] == want.token_str
