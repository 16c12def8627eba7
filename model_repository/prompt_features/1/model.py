"""Triton model `prompt_features` (python_backends.serving.decoder_models)."""
from python_backends.serving.decoder_models import PromptFeaturesModel


class TritonPythonModel(PromptFeaturesModel):
    pass
