"""Triton model `llm`: Step1 generation for HTTP and unary gRPC, through `llm_stream`
(python_backends.serving.llm_models)."""
from python_backends.serving.llm_models import LlmModel


class TritonPythonModel(LlmModel):
    pass

