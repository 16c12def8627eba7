"""Triton model `llm`: Step1 generation for HTTP and unary gRPC, through `llm_stream`
(python_backends.triton_llm)."""
from python_backends.triton_llm import LlmModel


class TritonPythonModel(LlmModel):
    pass

