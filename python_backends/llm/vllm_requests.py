"""Requests to, and answers from, the `llm_vllm` model (Triton's vLLM backend serving Step1).

The vLLM backend takes a text prompt (`text_input`) and no token ids, and answers with text.
Our prompts are token ids, so:
- the ids are rendered as text that re-encodes to exactly those ids (every special piece is
  matched whole by the release's LlamaTokenizerFast, and the text runs between them encode as
  they did in the prompt builder); the leading <s> is left to vLLM, which adds it. The round
  trip is checked with our encoder of the same tokenizer and a prompt that fails it is refused;
- the generated ids are read from the `logprobs` output: with `logprobs` 0 vLLM reports, for
  each generated position, the log-probability of the sampled id only, keyed by that id.

The sampling parameters are those of the original `generate` call (step_audio_internals.md
§2.5), except the repetition-aware ban, which vLLM does not have (see README, vLLM variant).
"""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from ..errors import InvalidInput
from ..settings import LLM
from .sampling import SamplingParams
from .text_tokenizer import TextTokenizer

VLLM_MODEL = "llm_vllm"


def vllm_prompt_text(tok: TextTokenizer, prompt_ids: Sequence[int]) -> str:
    """`prompt_ids` (starting with <s>) as the `text_input` vLLM tokenizes back into them."""
    ids = [int(i) for i in prompt_ids]
    if not ids or ids[0] != LLM.bos_id:
        raise InvalidInput("input_ids", "does not start with <s> (id 1)",
                           "a prompt_builder prompt: vLLM adds the leading <s> itself")
    text = tok.decode(ids[1:])
    if tok.encode(text, add_bos=True) != ids:
        raise InvalidInput("input_ids", "has no text form that tokenizes back into the same ids",
                           "ids the text tokenizer produces (the prompt_builder's output)")
    return text


def vllm_sampling_parameters(params: SamplingParams, prompt_len: int) -> dict:
    """The `sampling_parameters` JSON object for one request of `prompt_len` ids."""
    if prompt_len >= params.max_length:
        raise InvalidInput("input_ids", f"has {prompt_len} ids",
                           f"fewer than max_length ({params.max_length})")
    sampling = {
        "temperature": 0.0 if params.greedy else params.temperature,  # vLLM: 0 is greedy
        "top_k": params.top_k if params.top_k else -1,  # vLLM: -1 is no top-k filter
        "top_p": 1.0,
        "repetition_penalty": 1.0,
        "max_tokens": params.max_length - prompt_len,  # HF max_length counts the prompt
        "stop_token_ids": [LLM.eot_id],
        # the tokenizer's eos is </s> (2); HF generate stops on config.json's eos 3 only
        "ignore_eos": True,
        "logprobs": 0,  # the sampled id of every step: the output ids
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
    }
    if params.seed is not None:
        sampling["seed"] = params.seed
    return sampling


def vllm_request_inputs(text: str, sampling: dict, stream: bool) -> dict[str, np.ndarray]:
    """The input tensors of one `llm_vllm` request (the model has max_batch_size 0)."""
    return {
        "text_input": np.array([text.encode("utf-8")], dtype=np.object_),
        "sampling_parameters": np.array([json.dumps(sampling).encode("utf-8")], dtype=np.object_),
        "stream": np.array([stream]),
        "exclude_input_in_output": np.array([True]),
        "return_logprobs": np.array([True]),
    }


def vllm_output_ids(logprobs: bytes | str) -> list[int]:
    """The ids one response generated, from its `logprobs` element (a JSON list holding, per
    position, {id: {...}}). Each position must hold the sampled id alone (`logprobs` 0)."""
    positions = json.loads(logprobs)
    if positions is None:
        raise ValueError("llm_vllm returned no logprobs: the request must set logprobs 0 "
                         "and return_logprobs true")
    ids = []
    for at, entry in enumerate(positions):
        if len(entry) != 1:
            raise ValueError(f"llm_vllm logprobs position {at} holds {len(entry)} ids, not the "
                             "sampled id alone: the request must set logprobs 0")
        ids.append(int(next(iter(entry))))
    return ids
