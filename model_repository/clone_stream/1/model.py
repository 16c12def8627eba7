"""Triton model `clone_stream`: voice clone (python_backends.clone_model; decoupled, the waveform in chunks)."""
from python_backends.clone_model import CloneModel


class TritonPythonModel(CloneModel):
    stream = True
