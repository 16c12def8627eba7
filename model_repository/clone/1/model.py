"""Triton model `clone`: voice clone (python_backends.serving.clone_model)."""
from python_backends.serving.clone_model import CloneModel


class TritonPythonModel(CloneModel):
    pass
