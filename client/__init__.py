"""Python client and CLI (`python -m client tokenize FILE.wav`) for the audio tokenizer server."""
from .tokenizer_client import AudioTokenizerClient
from .triton_base import TokenizerError, format_stage_times

__all__ = ["AudioTokenizerClient", "TokenizerError", "format_stage_times"]
