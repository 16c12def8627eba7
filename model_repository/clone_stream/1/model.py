"""Triton model `clone_stream`: voice clone (python_backends.serving.clone_model; decoupled, the waveform in chunks)."""
from python_backends.serving.clone_model import CloneModel


class TritonPythonModel(CloneModel):
    stream = True
