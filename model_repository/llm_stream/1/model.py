"""Triton model `llm_stream`: Step1 generation in one continuous batch, decoupled
(python_backends.triton_llm)."""
from python_backends.triton_llm import LlmStreamModel


class TritonPythonModel(LlmStreamModel):
    pass
