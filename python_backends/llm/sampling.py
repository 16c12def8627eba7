"""Next-token choice as the original runs Hugging Face `generate` (step_audio_internals.md §2.5).

Per step, on float32 logits: the repetition-aware ban (the newest id is banned when it occurs
more than once among the last 10 ids of the whole sequence, prompt included), then for sampling
temperature, top-k and a multinomial draw; greedy takes the argmax after the ban. Each request
draws from its own seeded `torch.Generator`, so its output does not depend on what else is in
the batch. Generation stops on <|EOT|> or when the sequence reaches `max_length` ids.
"""
from __future__ import annotations

import dataclasses
import secrets
from typing import Sequence

import torch

from ..errors import InvalidInput
from ..settings import LLM

SEED_LIMIT = 2 ** 63


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = LLM.temperature
    top_k: int = LLM.top_k  # 0: no top-k filter
    greedy: bool = False
    seed: int | None = None  # None: a fresh random seed per request (the original is unseeded)
    max_length: int = LLM.max_length  # total ids, prompt included (HF `max_length`)
    # True (the original, `output_ids[len(prompt):-1]`): the last generated id is dropped,
    # <|EOT|> or, when max_length stopped generation, an audio token. False: only <|EOT|> is.
    drop_last: bool = True

    def __post_init__(self):
        if not LLM.min_temperature <= self.temperature <= LLM.max_temperature:
            raise InvalidInput("temperature", f"is {self.temperature:g}",
                               f"a number from {LLM.min_temperature:g} to {LLM.max_temperature:g} "
                               "(greedy=true for the most likely id)")
        if self.top_k < 0:
            raise InvalidInput("top_k", f"is {self.top_k}", "0 (no filter) or a positive integer")
        if self.max_length < 2:
            raise InvalidInput("max_length", f"is {self.max_length}", "an integer >= 2")
        if self.seed is not None and not 0 <= self.seed < SEED_LIMIT:
            raise InvalidInput("seed", f"is {self.seed}", "an integer in [0, 2^63)")

    def check_prompt(self, prompt_ids: Sequence[int], vocab_size: int) -> None:
        """Refuse a prompt that is empty, holds ids outside the vocabulary or leaves no room
        for a generated id under `max_length` (HF would still generate one id, then return
        nothing after dropping it)."""
        if not prompt_ids:
            raise InvalidInput("input_ids", "is empty", "at least one token id")
        low, high = min(prompt_ids), max(prompt_ids)
        if low < 0 or high >= vocab_size:
            raise InvalidInput("input_ids", f"holds id {low if low < 0 else high}",
                               f"ids in [0, {vocab_size})")
        if len(prompt_ids) >= self.max_length:
            raise InvalidInput("input_ids", f"has {len(prompt_ids)} ids",
                               f"fewer than max_length ({self.max_length})")

    def new_generator(self, device) -> torch.Generator:
        seed = secrets.randbelow(SEED_LIMIT) if self.seed is None else self.seed
        return torch.Generator(device=device).manual_seed(seed)


def request_max_length(given: int | None, prompt_length: int, limit: int) -> int:
    """A request's max_length: `limit` (EditxSettings.max_length) when the client sent none. The
    client's own value is refused by its name when outside [2, limit] or when it leaves no room
    after a prompt that would fit under `limit` (a prompt that does not is check_prompt's)."""
    if given is None:
        return limit
    if not 2 <= given <= limit:
        raise InvalidInput("max_length", f"is {given}",
                           f"an integer from 2 to {limit} (prompt + generated ids)")
    if given <= prompt_length < limit:
        raise InvalidInput("max_length", f"is {given}, but the prompt has {prompt_length} ids",
                           f"more than the prompt's length ({prompt_length}) and at most {limit}")
    return given


def repetition_banned(ids: Sequence[int]) -> int | None:
    """The id the repetition-aware processor bans next, if any: the newest id when it occurs
    more than `repetition_ratio` of the last `repetition_window` ids (no ban while the
    sequence is shorter than the window)."""
    window = ids[-LLM.repetition_window:]
    if len(window) < LLM.repetition_window:
        return None
    newest = window[-1]
    return newest if window.count(newest) / LLM.repetition_window > LLM.repetition_ratio else None


def next_tokens(logits: torch.Tensor, histories: Sequence[Sequence[int]],
                params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None]
                ) -> list[int]:
    """One id per row of float32 logits [rows, vocab]; row r continues `histories[r]` with
    `params[r]`, drawing from `generators[r]`. The row-wise steps run batched; only the draws
    are per row (each request's own generator), and the ids come back in one transfer."""
    scores = logits.float().clone()
    bans = [(row, banned) for row, ids in enumerate(histories)
            if (banned := repetition_banned(ids)) is not None]
    if bans:
        rows, ids = zip(*bans)
        scores[list(rows), list(ids)] = float("-inf")
    chosen = scores.argmax(dim=-1)
    sampled = [row for row, p in enumerate(params) if not p.greedy]
    if sampled:
        vocab = scores.shape[-1]
        temperature = torch.tensor([[params[r].temperature] for r in sampled],
                                   dtype=scores.dtype, device=scores.device)
        rows = scores[sampled] / temperature
        ks = [min(params[r].top_k, vocab) or vocab for r in sampled]
        if min(ks) < vocab:
            top = torch.topk(rows, max(ks)).values
            kth = top[torch.arange(len(ks)), torch.tensor(ks) - 1][:, None]
            rows = rows.masked_fill(rows < kth, float("-inf"))
        probs = torch.softmax(rows, dim=-1)
        draws = torch.cat([torch.multinomial(probs[i: i + 1], 1, generator=generators[r])[0]
                           for i, r in enumerate(sampled)])
        chosen[sampled] = draws
    return chosen.tolist()


def next_token(logits: torch.Tensor, ids: Sequence[int], params: SamplingParams,
               generator: torch.Generator | None) -> int:
    """`next_tokens` for one sequence: logits [vocab]."""
    return next_tokens(logits[None], [ids], [params], [generator])[0]


def is_finished(ids: Sequence[int], params: SamplingParams) -> bool:
    """HF's stopping criteria: the newest id is <|EOT|>, or the sequence is max_length long."""
    return ids[-1] == LLM.eot_id or len(ids) >= params.max_length


def final_output(generated: Sequence[int], params: SamplingParams) -> list[int]:
    """The ids handed back once generation stopped (see `SamplingParams.drop_last`)."""
    if params.drop_last or generated[-1] == LLM.eot_id:
        return list(generated[:-1])
    return list(generated)
