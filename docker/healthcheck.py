"""Container health check: the server is ready AND a real request through a public model succeeds.

    python3 docker/healthcheck.py [--url localhost:8000] [--model audio_tokenizer]

Why a request: when a Python backend stub process dies (killed, out of memory), tritonserver
2.51 keeps answering ready on /v2/health/ready and for the model, while every request that
reaches the dead instance fails with "Stub process '<instance>' is not healthy." and nothing
restarts it. So this check sends one short request, and when it fails that way it reloads each
named model (POST /v2/repository/models/<model>/load: the server must run with
--model-control-mode=explicit) and reports unhealthy for this round; the next round sees the
model back. Exit code 0: healthy, 1: not.

`PROBES` maps a public model to a builder of its probe inputs; `check()` takes any builder.
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


PROBES: dict[str, Callable[[], Inputs]] = {"audio_tokenizer": tokenizer_probe}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="localhost:8000", help="the server's HTTP host:port")
    parser.add_argument("--model", default="audio_tokenizer", choices=sorted(PROBES))
    args = parser.parse_args(argv)
    health = check(args.url, args.model)
    reloaded = f" (reloaded {', '.join(health.reloaded)})" if health.reloaded else ""
    print(f"{'healthy' if health.healthy else 'unhealthy'}: {health.message}{reloaded}")
    return 0 if health.healthy else 1


if __name__ == "__main__":
    sys.exit(main())
