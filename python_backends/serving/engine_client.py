"""How a Python model calls its engine model (TensorRT plan or ONNX Runtime) on the GPU: BLS.

In a GPU repository built with `--gpu-engine`, the `vq02` and `vq06` configs carry an
`engine_model` parameter naming `vq02_encoder` / `vq06_encoder`. A Python model then keeps its
pre- and post-processing (features, window plan, splitting codes per request) and sends the
tensors to the engine with a BLS request instead of running the network itself:

    client = engine_client.from_model_args(args)        # in initialize(); None: no engine
    codes = client.infer({"feats": feats, ...}, ["codes"])["codes"]

Inputs may be numpy arrays or torch tensors; CUDA tensors travel by DLPack (no host copy)
and GPU outputs come back as torch tensors on the device, CPU outputs as numpy arrays.
`from_model_args` first checks the engine's plan (if it is a TensorRT plan) against the GPU
of this instance and the TensorRT here (engine_metadata.check_plan): a plan built for
another GPU or TensorRT version makes the model fail to load with a message saying so.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from ..engines import metadata as engine_metadata
from .stub import STUB_IPC_LOCK, pb as _pb
from ..errors import (CANCELLED_MESSAGE, INVALID_INPUT_MESSAGE, UNAVAILABLE_MESSAGE,
                      ForwardedInvalidInput, RequestCancelled, Unavailable)

ENGINE_PARAMETER = "engine_model"
SERVER_STOPPING = "Server not ready"  # what a BLS call gets once tritonserver is stopping


class EngineError(RuntimeError):
    """The called model failed (or answered without a requested output). A model that refused
    its input (INVALID_ARG) raises ForwardedInvalidInput instead, so the caller's client gets
    that message as its own input error."""


def to_pb_tensor(pb, name: str, value):
    """numpy / CPU torch → pb.Tensor (host); CUDA torch → pb.Tensor.from_dlpack (stays on GPU)."""
    if isinstance(value, np.ndarray):
        return pb.Tensor(name, np.ascontiguousarray(value))
    import torch

    if isinstance(value, torch.Tensor):
        if value.is_cuda:
            from torch.utils.dlpack import to_dlpack

            return pb.Tensor.from_dlpack(name, to_dlpack(value.contiguous()))
        return pb.Tensor(name, value.detach().contiguous().numpy())
    return pb.Tensor(name, np.asarray(value))


def from_pb_tensor(tensor):
    """pb.Tensor → numpy (host memory, copied out of the response) or a CUDA torch tensor."""
    if tensor.is_cpu():
        return np.array(tensor.as_numpy(), copy=True)
    from torch.utils.dlpack import from_dlpack

    return from_dlpack(tensor.to_dlpack())


class EngineClient:
    """Synchronous BLS calls to one engine model."""

    def __init__(self, model_name: str, pb=None):
        self.model_name = model_name
        self._pb = pb

    @property
    def pb(self):
        if self._pb is None:
            self._pb = _pb()
        return self._pb

    def _request(self, inputs: Mapping[str, object], outputs: Sequence[str], request_id: str = ""):
        pb = self.pb
        return pb.InferenceRequest(
            model_name=self.model_name, requested_output_names=list(outputs), request_id=request_id,
            inputs=[to_pb_tensor(pb, name, value) for name, value in inputs.items()])

    def _raise(self, message: str, invalid_input: bool = False) -> None:
        """The called model's failure as ours: its input error as the client's, a stopping
        server as UNAVAILABLE, a cancelled call as RequestCancelled, else EngineError."""
        if invalid_input or INVALID_INPUT_MESSAGE.fullmatch(message):
            raise ForwardedInvalidInput(message)
        if UNAVAILABLE_MESSAGE.fullmatch(message) or SERVER_STOPPING in message:
            raise Unavailable(f"model '{self.model_name}': {message}")
        if CANCELLED_MESSAGE.fullmatch(message):
            raise RequestCancelled(f"model '{self.model_name}': {message}")
        raise EngineError(f"model '{self.model_name}' failed: {message}")

    def _outputs(self, response, outputs: Sequence[str]) -> dict[str, object]:
        if response.has_error():
            error = response.error()
            codes = getattr(self.pb, "TritonError", None)
            coded = codes is not None and hasattr(error, "code") and error.code() == codes.INVALID_ARG
            self._raise(error.message(), coded)
        result = {}
        for name in outputs:
            tensor = self.pb.get_output_tensor_by_name(response, name)
            if tensor is None:
                raise EngineError(f"model '{self.model_name}' returned no output '{name}'")
            result[name] = from_pb_tensor(tensor)
        return result

    def _submit(self, inputs: Mapping[str, object], outputs: Sequence[str], request_id: str = ""):
        """Send the request; its responses arrive through the returned iterator. Only the
        sending holds the stub's IPC lock (stub.STUB_IPC_LOCK), so calls from many
        threads still overlap and meet in the called models' batches."""
        with STUB_IPC_LOCK:
            return self._request(inputs, outputs, request_id).exec(decoupled=True)

    def infer(self, inputs: Mapping[str, object], outputs: Sequence[str]) -> dict[str, object]:
        responses = list(self._submit(inputs, outputs))
        if not responses:
            raise EngineError(f"model '{self.model_name}' sent no response")
        return self._outputs(responses[0], outputs)

    def stream(self, inputs: Mapping[str, object], outputs: Sequence[str],
               cancelled: Callable[[], bool] | None = None, error_output: str | None = None
               ) -> Iterator[dict[str, object]]:
        """A decoupled model's responses, each with the outputs it carries (an empty final
        response yields nothing). When `cancelled()` turns true between responses, the called
        model is told to stop this request, its remaining responses are read and dropped, and
        RequestCancelled is raised.

        Triton 2.51's BLS has no cancel (`ResponseIterator.cancel` is missing), so the call
        carries a fresh request id and the stop is a second request to the same model whose
        `cancel` input names it (llm_stream reads it; see its config).

        `error_output`: an output of the called model that carries a failure's message in its
        final response (2.51 loses a BLS stream's error responses that follow data)."""
        request_id = uuid.uuid4().hex
        asked = list(outputs) + ([error_output] if error_output else [])
        responses = self._submit(inputs, asked, request_id)
        for response in responses:
            if cancelled is not None and cancelled():
                self._stop(request_id)
                for last in responses:  # the stopped request's last responses
                    if last.has_error() or self._error_in(last, error_output):
                        break
                raise RequestCancelled(f"cancelled while '{self.model_name}' was answering")
            if response.has_error():
                self._outputs(response, outputs)
            message = self._error_in(response, error_output)
            if message is not None:
                self._raise(message)
            present = [n for n in outputs if self.pb.get_output_tensor_by_name(response, n) is not None]
            if present:
                yield self._outputs(response, present)


    def _error_in(self, response, error_output: str | None) -> str | None:
        if error_output is None:
            return None
        tensor = self.pb.get_output_tensor_by_name(response, error_output)
        if tensor is None:
            return None
        value = tensor.as_numpy().reshape(-1)[0]
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    def _stop(self, request_id: str) -> None:
        """Ask the model to stop the request sent with `request_id` (its `cancel` input)."""
        for response in self._submit({"cancel": np.array([[request_id.encode()]], dtype=np.object_)}, []):
            if response.has_error():
                self._outputs(response, [])


def engine_model_name(args: Mapping) -> str | None:
    """The `engine_model` parameter of this model's config, None when absent or empty."""
    config = json.loads(args["model_config"])
    value = config.get("parameters", {}).get(ENGINE_PARAMETER, {}).get("string_value", "")
    return value or None


def engine_version_dir(args: Mapping, engine: str) -> Path:
    """REPO/<engine>/1: `model_repository` in the args is this model's folder, REPO/<model>."""
    return Path(args["model_repository"]).parent / engine / "1"


def check_engine(version_dir: Path, device_index: int,
                 env: engine_metadata.Environment | None = None) -> engine_metadata.PlanMetadata | None:
    """Refuse (PlanMismatch) a TensorRT plan in `version_dir` built for another GPU or TensorRT;
    None for an ONNX engine (ONNX Runtime builds its TensorRT engines itself)."""
    plan = version_dir / "model.plan"
    if plan.is_file():
        return engine_metadata.check_plan(plan, env, device_index)
    if (version_dir / "model.onnx").is_file():
        return None
    raise engine_metadata.PlanMismatch(f"engine folder {version_dir} holds neither model.plan nor "
                                       "model.onnx; rebuild the repository with --gpu-engine")


def from_model_args(args: Mapping, pb=None, env: engine_metadata.Environment | None = None
                    ) -> EngineClient | None:
    """The client for the engine this model's config names (checked for this instance's GPU),
    or None when the config names none (CPU repositories, --gpu-engine none)."""
    engine = engine_model_name(args)
    if engine is None:
        return None
    device_index = int(args.get("model_instance_device_id", 0) or 0)
    check_engine(engine_version_dir(args, engine), device_index, env)
    return EngineClient(engine, pb)
