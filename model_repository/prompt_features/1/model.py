"""Triton model `prompt_features` (python_backends.triton_decoder)."""
from python_backends.triton_decoder import PromptFeaturesModel


class TritonPythonModel(PromptFeaturesModel):
    pass
