"""Triton model `llm_stream`: Step1 generation in one continuous batch, decoupled
(python_backends.serving.llm_models)."""
from python_backends.llm.cpu_runtime import use_intel_openmp

use_intel_openmp()  # before torch is imported: this stub's parallel regions run on libiomp5

from python_backends.serving.llm_models import LlmStreamModel  # noqa: E402


class TritonPythonModel(LlmStreamModel):
    pass
