"""What the thin `model_repository/*/1/model.py` files share: reading one utterance (or one
string) per request, and turning bad input into a per-request error response.

Every model is batched: `execute` gets several requests, each carrying one utterance (batch
dimension 1). A request that fails validation gets its own error response; the others in the
same `execute` call still run.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import EXPECTED_OUTCOMES, InvalidInput, RequestCancelled, Unavailable
from .stub import log_internal, pb

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


def read_text(request, name: str) -> str:
    """A BYTES [1] input (after the batch dimension) decoded as UTF-8."""
    values = read_utterance(request, name, np.object_)
    if values.size != 1:
        raise InvalidInput(name, f"holds {values.size} strings", "exactly one UTF-8 string")
    value = values[0]
    if isinstance(value, str):
        return value
    raw = bytes(value)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(name, f"is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                           f"{exc.start})", "UTF-8 text") from None


# --------------------------------------------------------------------------- responses

def tensor(name: str, values: np.ndarray):
    """An output tensor with the batch dimension (1) put back."""
    return pb().Tensor(name, np.asarray(values)[None])


def bytes_tensor(name: str, text: str):
    return pb().Tensor(name, np.array([[text.encode("utf-8")]], dtype=np.object_))


def error_message(exc: BaseException) -> str:
    """What the client reads: the InvalidInput / Unavailable message, "cancelled: …" or
    "internal error: …" (the forms EngineClient recognises in a called model's answer)."""
    if isinstance(exc, (InvalidInput, Unavailable)):
        return str(exc)
    if isinstance(exc, RequestCancelled):
        return f"cancelled: {exc}"
    return f"internal error: {type(exc).__name__}: {exc}"


def error_response(exc: BaseException):
    """Client input errors → INVALID_ARG; a cancelled request → CANCELLED; a draining or
    stopping server → UNAVAILABLE; anything else → INTERNAL."""
    utils = pb()
    codes = utils.TritonError
    code = (codes.INVALID_ARG if isinstance(exc, InvalidInput)
            else getattr(codes, "CANCELLED", codes.INTERNAL) if isinstance(exc, RequestCancelled)
            else codes.UNAVAILABLE if isinstance(exc, Unavailable) else codes.INTERNAL)
    return utils.InferenceResponse(error=codes(error_message(exc), code))


def respond_each(requests: Sequence, handle: Callable) -> list:
    """`handle(request) -> list of output tensors`, one request at a time; a failure answers only
    that request."""
    responses = []
    for request in requests:
        try:
            responses.append(pb().InferenceResponse(output_tensors=handle(request)))
        except Exception as exc:  # noqa: BLE001 - every failure becomes that request's response
            if not isinstance(exc, EXPECTED_OUTCOMES):
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
            if not isinstance(exc, EXPECTED_OUTCOMES):
                log_internal(exc)
            responses[i] = error_response(exc)
    if items:
        try:
            results = run(items)
            if len(results) != len(items):
                raise RuntimeError(f"got {len(results)} results for {len(items)} requests")
        except Exception as exc:  # noqa: BLE001
            if not isinstance(exc, EXPECTED_OUTCOMES):
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


