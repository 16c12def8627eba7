"""Triton model `speaker_embedding` (python_backends.triton_decoder)."""
from python_backends.triton_decoder import SpeakerEmbeddingModel


class TritonPythonModel(SpeakerEmbeddingModel):
    pass
