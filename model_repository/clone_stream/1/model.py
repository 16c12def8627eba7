"""Triton model `clone_stream`: voice clone, streamed (python_backends.serving.clone_model; decoupled, audio chunks as they are decoded)."""
from python_backends.serving.clone_model import CloneStreamModel


class TritonPythonModel(CloneStreamModel):
    pass
