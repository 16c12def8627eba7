"""Triton model `llm_stream`: Step1 generation in one continuous batch, decoupled
(python_backends.serving.llm_models)."""
from python_backends.serving.llm_models import LlmStreamModel


class TritonPythonModel(LlmStreamModel):
    pass
