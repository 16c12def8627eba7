"""Triton model `speaker_embedding` (python_backends.serving.decoder_models)."""
from python_backends.serving.decoder_models import SpeakerEmbeddingModel


class TritonPythonModel(SpeakerEmbeddingModel):
    pass
