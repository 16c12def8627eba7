"""Triton model `clone`: voice clone (python_backends.clone_model)."""
from python_backends.clone_model import CloneModel


class TritonPythonModel(CloneModel):
    stream = False
