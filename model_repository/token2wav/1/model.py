"""Triton model `token2wav` (python_backends.triton_decoder)."""
from python_backends.triton_decoder import Token2WavModel


class TritonPythonModel(Token2WavModel):
    pass
