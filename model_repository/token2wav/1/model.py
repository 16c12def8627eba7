"""Triton model `token2wav` (python_backends.serving.decoder_models)."""
from python_backends.serving.decoder_models import Token2WavModel


class TritonPythonModel(Token2WavModel):
    pass
