"""The oracle: Step-Audio's original tokenizer algorithm, step by step, used only by tests and
benchmarks to prove the fast Triton models produce the same tokens. Slow on purpose."""
from .tokenizer import ReferenceTokenizer

__all__ = ["ReferenceTokenizer"]
