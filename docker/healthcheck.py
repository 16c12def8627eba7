"""Container health check: the server is ready AND a real request to each probe model succeeds.

    python3 docker/healthcheck.py [--url localhost:8000] [--model audio_tokenizer ...]

Why a request: when a Python backend stub process dies (killed, out of memory), tritonserver
2.51 keeps answering ready on /v2/health/ready and for the model, while every request that
reaches the dead instance fails with "Stub process '<instance>' is not healthy." and nothing
restarts it. So this check sends one short request to each model of `PROBES` the server
has ready (or to those named by --model), and when one fails that way it reloads each named
model (POST /v2/repository/models/<model>/load: the server must run with
--model-control-mode=explicit) and reports unhealthy for this round; the next round sees the
model back. Exit code 0: healthy, 1: not.

`PROBES` maps a model to a builder of its probe inputs, the cheapest request that runs it:
`audio_tokenizer` (the tokenizer members), and in a repository with the clone pipeline
`prompt_encoder` (speaker embedding, prompt features), `llm` (llm_stream, which holds the LLM)
and `token2wav`. `check()` probes one model with any builder; `check_all()` the ready ones.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from typing import Callable

import numpy as np

DEAD_STUB = re.compile(r"Stub process '(?P<instance>[^']+)' is not healthy")
# Triton's default instance names: <model>_<group index>_<instance index>
INSTANCE = re.compile(r"^(?P<model>.+)_\d+_\d+$")

Inputs = dict[str, np.ndarray]


def tokenizer_probe() -> Inputs:
    """0.5 s of quiet noise at 16 kHz: the cheapest request that runs every tokenizer model."""
    audio = (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    return {"waveform": audio[None], "sample_rate": np.array([[16000]], np.int32),
            "channels": np.array([[1]], np.int32)}


def prompt_encoder_probe() -> Inputs:
    """1 s of noise: longer than the shortest voice prompt (0.5 s)."""
    audio = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    return {"waveform": audio[None], "sample_rate": np.array([[16000]], np.int32),
            "channels": np.array([[1]], np.int32)}


def llm_probe() -> Inputs:
    """<s><|BOT|> and two greedy ids (the LLM drops the last one)."""
    from python_backends.settings import LLM

    return {"input_ids": np.array([[LLM.bos_id, LLM.bot_id]], np.int32),
            "max_new_tokens": np.array([[2]], np.int32), "greedy": np.array([[True]], np.bool_)}


def token2wav_probe() -> Inputs:
    """10 audio ids after a 15-id, 21-frame prompt: 6 rows of 960 samples."""
    from python_backends.settings import DECODER, LLM

    rng = np.random.default_rng(0)

    def audio_ids(count: int) -> np.ndarray:  # the LLM's pattern: 2 vq02 ids, then 3 vq06 ids
        codes = np.where(np.arange(count) % 5 < 2, rng.integers(0, 1024, count),
                         rng.integers(1024, LLM.audio_tokens, count))
        return (codes + LLM.audio_token_offset).astype(np.int32)[None]

    return {"target_ids": audio_ids(10), "prompt_ids": audio_ids(15),
            "prompt_mel": rng.standard_normal((1, 21, DECODER.mel_bins)).astype(np.float32),
            "speaker_embedding": rng.standard_normal((1, 192)).astype(np.float32),
            "seed": np.array([[0]], np.int64)}


PROBES: dict[str, Callable[[], Inputs]] = {"audio_tokenizer": tokenizer_probe,
                                           "prompt_encoder": prompt_encoder_probe,
                                           "llm": llm_probe, "token2wav": token2wav_probe}


@dataclasses.dataclass(frozen=True)
class Health:
    healthy: bool
    message: str
    reloaded: tuple[str, ...] = ()


def dead_stub_models(message: str) -> tuple[str, ...]:
    """The models whose stub the error message reports dead, in order, without repeats."""
    models = []
    for match in DEAD_STUB.finditer(message):
        instance = match.group("instance")
        name = INSTANCE.match(instance)
        model = name.group("model") if name else instance
        if model not in models:
            models.append(model)
    return tuple(models)


def check(url: str = "localhost:8000", model: str = "audio_tokenizer",
          build_inputs: Callable[[], Inputs] | None = None, timeout_s: float = 60.0) -> Health:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    client = httpclient.InferenceServerClient(url, connection_timeout=timeout_s,
                                              network_timeout=timeout_s)
    try:
        try:
            if not client.is_server_ready():
                return Health(False, "server is not ready")
        except Exception as exc:  # noqa: BLE001 - not reachable is one answer
            return Health(False, f"server is not reachable: {exc}")
        inputs = []
        for name, array in (build_inputs or PROBES[model])().items():
            tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        try:
            client.infer(model, inputs)
            return Health(True, f"'{model}' answered")
        except InferenceServerException as exc:
            failure = exc.message()
        dead = dead_stub_models(failure)
        reloaded = []
        for name in dead:
            try:
                client.load_model(name)
                reloaded.append(name)
            except InferenceServerException as exc:
                failure += f"; reloading '{name}' failed: {exc.message()}"
        return Health(False, f"'{model}' failed: {failure}", tuple(reloaded))
    finally:
        client.close()


def ready_probes(url: str = "localhost:8000", timeout_s: float = 60.0) -> tuple[str, ...]:
    """The models of PROBES the server has loaded and ready, in PROBES order."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, connection_timeout=timeout_s,
                                              network_timeout=timeout_s)
    try:
        ready = {m["name"] for m in client.get_model_repository_index() if m.get("state") == "READY"}
    finally:
        client.close()
    return tuple(model for model in PROBES if model in ready)


def check_all(url: str = "localhost:8000", models: tuple[str, ...] | None = None,
              timeout_s: float = 60.0) -> Health:
    """check() each of `models` (default: the ready probe models); healthy when all are. Every
    model is probed even after a failure, so one round reloads every dead stub it meets."""
    try:
        models = models or ready_probes(url, timeout_s)
    except Exception as exc:  # noqa: BLE001 - not reachable is one answer
        return Health(False, f"server is not reachable: {exc}")
    if not models:
        return Health(False, f"the server has none of {', '.join(PROBES)} ready")
    results = [check(url, model, timeout_s=timeout_s) for model in models]
    reloaded = tuple(dict.fromkeys(name for r in results for name in r.reloaded))
    return Health(all(r.healthy for r in results), "; ".join(r.message for r in results), reloaded)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="localhost:8000", help="the server's HTTP host:port")
    parser.add_argument("--model", action="append", choices=sorted(PROBES),
                        help="probe this model (repeatable; default: every ready one of PROBES)")
    args = parser.parse_args(argv)
    health = check_all(args.url, tuple(args.model) if args.model else None)
    reloaded = f" (reloaded {', '.join(health.reloaded)})" if health.reloaded else ""
    print(f"{'healthy' if health.healthy else 'unhealthy'}: {health.message}{reloaded}")
    return 0 if health.healthy else 1


if __name__ == "__main__":
    sys.exit(main())
