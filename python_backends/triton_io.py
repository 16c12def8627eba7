"""What the thin `model_repository/*/1/model.py` files share: reading one utterance per request,
turning bad input into a per-request error response, the instance's device and the settings.

Every model is batched: `execute` gets several requests, each carrying one utterance (batch
dimension 1). A request that fails validation gets its own error response; the others in the
same `execute` call still run. `triton_python_backend_utils` exists only inside the Python
backend's stub, so it is imported lazily (unit tests put a stand-in into `sys.modules`).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import threading
import traceback
from typing import Callable, Sequence

import numpy as np

from .errors import InvalidInput
from .settings import TokenizerSettings

SETTINGS_PARAMETER = "tokenizer_settings"

# Triton 2.51's Python backend crashes (segfault in libtriton_python, then a boost interprocess
# lock_exception) when several threads of one stub talk to the server at once (server issue
# #8882; seen here with concurrent clones). Every call our worker threads make into the stub's
# IPC (sending a BLS request, cancelling it, asking whether a request was cancelled, sending a
# response, logging, metrics) holds this lock; waiting for BLS responses does not.
STUB_IPC_LOCK = threading.RLock()


def pb():
    """The Python backend's utility module (`triton_python_backend_utils`)."""
    import triton_python_backend_utils

    return triton_python_backend_utils


# --------------------------------------------------------------------------- model arguments

def model_parameters(args: dict) -> dict[str, str]:
    """The `parameters { key: ... value: { string_value: ... } }` entries of the model config."""
    config = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def instance_device(args: dict) -> str:
    """"cuda:N" for a KIND_GPU instance (N = model_instance_device_id), otherwise "cpu"."""
    if args.get("model_instance_kind", "CPU").upper() == "GPU":
        return f"cuda:{int(args.get('model_instance_device_id', 0))}"
    return "cpu"


def load_settings(args: dict) -> TokenizerSettings:
    """The settings `build_repository.py` wrote into the config, on this instance's device."""
    params = model_parameters(args)
    if SETTINGS_PARAMETER not in params:
        raise RuntimeError(f"model '{args.get('model_name')}' config lacks the "
                           f"'{SETTINGS_PARAMETER}' parameter; build the repository with "
                           "build_scripts/build_repository.py")
    settings = TokenizerSettings.from_json(params[SETTINGS_PARAMETER])
    return dataclasses.replace(settings, device=instance_device(args))


def warmup_audio(seconds: float = 1.0, sample_rate: int = 16000) -> np.ndarray:
    """Deterministic noise to run once in initialize(): the first real request then does not
    pay for numba compilation, onnxruntime's first-run setup or torch's lazy init."""
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal(int(seconds * sample_rate))).astype(np.float32)


# --------------------------------------------------------------------------- reading inputs

def read_utterance(request, name: str, dtype=np.float32, optional: bool = False) -> np.ndarray | None:
    """The request's input `name` as a 1-D array: its batch dimension must be 1.

    Triton has already checked the datatype and the rank against the config
    ([batch, -1] for variable-length inputs, [batch, 1] for scalars).
    """
    tensor = pb().get_input_tensor_by_name(request, name)
    if tensor is None:
        if optional:
            return None
        raise InvalidInput(name, "is missing", "every request must carry it")
    array = tensor.as_numpy()
    if array.ndim != 2:
        raise InvalidInput(name, f"has shape {list(array.shape)}",
                           "shape [1, N]: one utterance per request")
    if array.shape[0] != 1:
        raise InvalidInput(name, f"has batch size {array.shape[0]}",
                           "batch size 1: one utterance per request, send several requests to batch")
    return np.ascontiguousarray(array[0], dtype=dtype)


def read_scalar(request, name: str, default: int | None = None) -> int:
    """An INT32 [1] input (after the batch dimension) as a Python int; `default` when absent."""
    values = read_utterance(request, name, np.int64, optional=default is not None)
    if values is None:
        return int(default)
    if values.size != 1:
        raise InvalidInput(name, f"holds {values.size} values", "exactly one integer")
    return int(values[0])


def read_audio(request, name: str) -> np.ndarray:
    """A 16 kHz float32 utterance handed on between models (checked again: a client may call
    `vq02`/`vq06` directly)."""
    audio = read_utterance(request, name, np.float32)
    if audio.size == 0:
        raise InvalidInput(name, "is empty", "at least one sample")
    if not np.isfinite(audio).all():
        raise InvalidInput(name, "contains NaN or Inf", "finite float32 samples")
    return audio


# --------------------------------------------------------------------------- responses

def tensor(name: str, values: np.ndarray):
    """An output tensor with the batch dimension (1) put back."""
    return pb().Tensor(name, np.asarray(values)[None])


def bytes_tensor(name: str, text: str):
    return pb().Tensor(name, np.array([[text.encode("utf-8")]], dtype=np.object_))


def is_cancelled(request) -> bool:
    """request.is_cancelled() under the IPC lock (it asks the server)."""
    with STUB_IPC_LOCK:
        return bool(request.is_cancelled())


def error_response(exc: BaseException):
    """Client input errors → INVALID_ARG with the InvalidInput message; anything else → INTERNAL."""
    utils = pb()
    if isinstance(exc, InvalidInput):
        return utils.InferenceResponse(error=utils.TritonError(str(exc), utils.TritonError.INVALID_ARG))
    return utils.InferenceResponse(error=utils.TritonError(
        f"internal error: {type(exc).__name__}: {exc}", utils.TritonError.INTERNAL))


def log_internal(exc: BaseException) -> None:
    text = "".join(traceback.format_exception(exc))
    try:
        with STUB_IPC_LOCK:
            pb().Logger.log_error(text)
    except Exception:  # outside the stub, or a stub without Logger
        print(text, file=sys.stderr, flush=True)


def respond_each(requests: Sequence, handle: Callable) -> list:
    """`handle(request) -> list of output tensors`, one request at a time; a failure answers only
    that request."""
    responses = []
    for request in requests:
        try:
            responses.append(pb().InferenceResponse(output_tensors=handle(request)))
        except Exception as exc:  # noqa: BLE001 - every failure becomes that request's response
            if not isinstance(exc, InvalidInput):
                log_internal(exc)
            responses.append(error_response(exc))
    return responses


def respond_batched(requests: Sequence, parse: Callable, run: Callable, outputs: Callable) -> list:
    """All valid requests of an `execute` call in ONE call of `run` (the batching).

    parse(request) -> item (raises InvalidInput for that request only);
    run(list of items) -> list of results, same order;
    outputs(result) -> list of output tensors.
    If `run` itself fails, every request it was given gets the error.
    """
    responses: list = [None] * len(requests)
    items, slots = [], []
    for i, request in enumerate(requests):
        try:
            items.append(parse(request))
            slots.append(i)
        except Exception as exc:  # noqa: BLE001
            if not isinstance(exc, InvalidInput):
                log_internal(exc)
            responses[i] = error_response(exc)
    if items:
        try:
            results = run(items)
            if len(results) != len(items):
                raise RuntimeError(f"got {len(results)} results for {len(items)} requests")
        except Exception as exc:  # noqa: BLE001
            if not isinstance(exc, InvalidInput):
                log_internal(exc)
            for i in slots:
                responses[i] = error_response(exc)
            return responses
        for i, result in zip(slots, results):
            try:
                responses[i] = pb().InferenceResponse(output_tensors=outputs(result))
            except Exception as exc:  # noqa: BLE001
                log_internal(exc)
                responses[i] = error_response(exc)
    return responses


def respond_codes(requests: Sequence, tokenizer: Callable, output: str, input_name: str = "audio_16k"
                  ) -> list:
    """The vq02 / vq06 models: every request's 16 kHz utterance through one `tokenizer` call."""
    return respond_batched(requests, parse=lambda request: read_audio(request, input_name),
                           run=tokenizer, outputs=lambda codes: [tensor(output, codes)])


def tokenizer_instance(args: dict, make: Callable):
    """The vq02 / vq06 models' tokenizer: `make(settings, engine_client)` on this instance's
    device and threads; warmed up in process, but not through an engine model, which may not
    be loaded yet (no BLS during initialize)."""
    from . import engine_client

    settings = load_settings(args)
    settings.apply_threads()
    engine = engine_client.from_model_args(args)
    tokenizer = make(settings, engine)
    if engine is None:
        tokenizer([warmup_audio()])
    return tokenizer
