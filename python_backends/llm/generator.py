"""Continuous batching of Step1 generation across concurrent requests.

Requests join and leave between steps. Each step runs ONE forward (`Step1Model.run`) over the
newest id of every decoding sequence and, in the same pass, prefill chunks of admitted
requests: at most `prefill_budget` prompt ids per step, taken first come first served, a long
prompt spread over several steps (chunked prefill), several short ones packed into one step
(batched prefill). So the weights are read once per step, and a long prompt delays the running
streams by one chunk per step instead of its whole length. A request whose prompt is complete
gets its first id from that forward and decodes from the next step on.

Slots: the decoding sequences fill slots 0..n-1 (so the decode batch is a plain slice of the
cache), the prefilling ones the slots after them. A finished sequence frees its slot at once
and the others move down into the hole. Each request samples with its own seeded generator,
so its ids do not depend on the batch it shares.

On CUDA, `static_decode` (a `StaticDecoder`) runs decode-only steps as captured CUDA graphs of
bucketed shapes; steps with prefill chunks, and shapes beyond the buckets, run eagerly.

Streaming: `on_token` gets ids once they are final. Because the original drops the last
generated id (see `SamplingParams.drop_last`), an id is held back until the next one exists;
the streamed ids therefore always concatenate to the final result.

Failures: a request whose callback fails ends with that error; the others go on. A failed
forward ends every sequence it carried (decoding and prefilling), not the generator.

Cancellation: `cancel(key)` (from any thread, no call into the serving process) stops the
request submitted with that key at the next step; a key cancelled before its request arrives
is remembered, so that request ends at once. `cancelled()` probes (which may ask the serving
process) are polled only on requests that have not finished: Triton 2.51 crashes when asked
about a request whose final response was sent.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
from typing import Callable, Sequence

import torch

from .sampling import SamplingParams, final_output, is_finished, next_tokens
from ..errors import RequestCancelled, Unavailable
from ..settings import EditxSettings
from .step1_model import Step1Model

LOG = logging.getLogger(__name__)
TokenCallback = Callable[[list], None]
DoneCallback = Callable[[list | None, BaseException | None], None]
StepCallback = Callable[[int, int, int], None]  # (active, pending, ids generated in this step)
# keys cancelled before their request arrived (a cancel can overtake its request): the newest kept
CANCELLED_KEYS_KEPT = 4096


class GeneratorStopped(Unavailable):
    """The generator was stopped before the request finished."""


@dataclasses.dataclass(eq=False)
class _Request:
    rid: int
    ids: list  # prompt + generated so far
    prompt_len: int
    params: SamplingParams
    on_token: TokenCallback | None
    on_done: DoneCallback
    rng: torch.Generator
    slot: int = -1
    filled: int = 0  # prompt ids already in the cache (prefill progress)
    held: int | None = None  # the newest id, not streamed until the next one exists
    done: bool = False
    cancelled: Callable[[], bool] | None = None
    key: str | None = None
    stop_requested: bool = False  # set by cancel(key), read by the step

    def finish(self, result: list | None, error: BaseException | None) -> None:
        self.done = True
        try:
            self.on_done(result, error)
        except Exception:  # a broken callback must not stop the generator
            LOG.exception("on_done of request %d failed", self.rid)


class BatchedGenerator:
    def __init__(self, model: Step1Model, max_active: int = 16, device=None,
                 prefill_budget: int = EditxSettings.llm_prefill_budget, cancel_check_steps: int = 8,
                 on_step: StepCallback | None = None, static_decode=None):
        """`prefill_budget`: prompt ids prefilled per step at most (all waiting prompts share
        it, first come first served). `static_decode`: a `static_decode.StaticDecoder` built
        on this model (its cache becomes the generator's), or None."""
        if device is not None and torch.device(device) != model.device:
            model = model.to(device)
        if prefill_budget < 1:
            raise ValueError(f"prefill_budget is {prefill_budget}; it must be >= 1")
        self.model = model
        self.max_active = max_active
        self.prefill_budget = prefill_budget
        self.cancel_check_steps = cancel_check_steps
        self._steps = 0
        self.static_decode = static_decode
        if static_decode is not None:
            if static_decode.cache.slots <= max_active:
                raise ValueError("the static decoder's cache needs max_active + 1 slots")
            self.cache = static_decode.cache
        else:
            self.cache = model.new_cache(max_active)
        self._ids = itertools.count(1)
        self._pending: list[_Request] = []
        self._filling: list[_Request] = []  # admitted, prompt not yet all in the cache
        self._active: list[_Request] = []  # decoding
        self._cond = threading.Condition()
        self._step_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._cancelled_keys: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.on_step = on_step
        self.generated_ids = 0  # ids chosen so far, all requests
        self.prefilled_ids = 0  # prompt ids run through the model so far
        self.static_steps = 0  # decode steps the static decoder ran (the others: eager)

    # ------------------------------------------------------------------ public API

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams,
               on_token: TokenCallback | None, on_done: DoneCallback,
               cancelled: Callable[[], bool] | None = None, key: str | None = None) -> int:
        """Queue one request; returns its id. Bad input raises `InvalidInput` here.
        `cancelled()` is polled every `cancel_check_steps` steps (and before its prefill); once
        true the request ends with `RequestCancelled` and frees its slot. `key`: the name
        `cancel(key)` stops it by."""
        prompt = [int(i) for i in prompt_ids]
        params.check_prompt(prompt, self.model.config.vocab_size)
        request = _Request(next(self._ids), prompt, len(prompt), params, on_token, on_done,
                           params.new_generator(self.model.device), cancelled=cancelled, key=key)
        with self._cond:
            if self._stopping:
                raise GeneratorStopped("the generator is stopping")
            if key is not None and self._cancelled_keys.pop(key, False) is None:
                request.stop_requested = True
            self._pending.append(request)
            self._cond.notify_all()
        return request.rid

    def cancel(self, key: str) -> bool:
        """Stop the unfinished request submitted with `key` at the next step; True if one was
        waiting or running. Otherwise the key is remembered for a request still on its way."""
        with self._cond:
            found = [r for r in self._pending + self._filling + self._active
                     if r.key == key and not r.done]
            for request in found:
                request.stop_requested = True
            if not found:
                self._cancelled_keys[key] = None
                while len(self._cancelled_keys) > CANCELLED_KEYS_KEPT:
                    self._cancelled_keys.popitem(last=False)
            self._cond.notify_all()
        return bool(found)

    def start(self) -> None:
        """Run steps on a background thread whenever requests wait or run."""
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="step1-generator",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread; unfinished requests end with `GeneratorStopped`."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        with self._step_lock, self._cond:
            self._fail(self._pending + self._filling + self._active,
                       GeneratorStopped("the generator stopped"))
            self._pending.clear()
            self._filling.clear()
            self._active.clear()
            self.cache.clear()
            self._stopping = False

    def generate(self, prompts: Sequence[Sequence[int]],
                 params_list: Sequence[SamplingParams]) -> list[list[int]]:
        """Generate for every prompt together; blocks until all are done. Without a running
        thread the calling thread drives the steps."""
        if len(prompts) != len(params_list):
            raise ValueError(f"{len(prompts)} prompts but {len(params_list)} SamplingParams")
        results: list = [None] * len(prompts)
        left = threading.Semaphore(0)

        def done_at(i):
            def on_done(ids, error):
                results[i] = error if error is not None else ids
                left.release()
            return on_done

        for i, (prompt, params) in enumerate(zip(prompts, params_list)):
            self.submit(prompt, params, None, done_at(i))
        for _ in prompts:
            while not left.acquire(blocking=self._thread is not None):
                self.step()
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    @property
    def active_count(self) -> int:
        """Sequences holding a cache slot: decoding or prefilling."""
        return len(self._active) + len(self._filling)

    @property
    def prefilling_count(self) -> int:
        return len(self._filling)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def step(self) -> bool:
        """Admit waiting requests into free slots, then run one forward: one id for every
        decoding sequence and up to `prefill_budget` prompt ids of the prefilling ones.
        Returns whether there was anything to do."""
        with self._step_lock, torch.inference_mode():
            with self._cond:
                stopped = [r for r in self._pending if r.stop_requested]
                waiting = [r for r in self._pending if not r.stop_requested]
                free = self.max_active - len(self._active) - len(self._filling)
                joining, self._pending = waiting[:free], waiting[free:]
            self._cancel(stopped + joining, every_step=True)
            self._steps += 1
            self._cancel(self._active + self._filling)
            self._filling += [r for r in joining if not r.done]
            self._retire()
            ran = False
            if self._active or self._filling:
                ran = self._forward()
                self._retire()
            return bool(joining or ran)

    # ------------------------------------------------------------------ internals

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._pending or self.active_count):
                    self._cond.wait()
                if self._stopping:
                    return
            before = self.generated_ids
            try:
                self.step()
            except Exception as error:  # a bug in a step: end what it touched, keep serving
                LOG.exception("generator step failed")
                with self._step_lock:
                    self._fail(self._active + self._filling, error)
                    self._retire()
            if self.on_step is not None:
                try:
                    self.on_step(self.active_count, len(self._pending), self.generated_ids - before)
                except Exception:  # noqa: BLE001 - metrics must not stop generation
                    LOG.exception("on_step failed")

    def _cancel(self, requests: list, every_step: bool = False) -> None:
        """End the unfinished requests that `cancel(key)` stopped (every step) or whose
        `cancelled()` is true (polled every cancel_check_steps steps: each poll may be a call
        into the serving process, and must never be made for a finished request)."""
        poll = every_step or self._steps % self.cancel_check_steps == 0
        for request in requests:
            if request.done:
                continue
            stop = request.stop_requested
            if not stop and poll and request.cancelled is not None:
                try:
                    stop = request.cancelled()
                except Exception:  # noqa: BLE001 - a broken probe cancels nothing
                    LOG.exception("cancel check of request %d failed", request.rid)
            if stop:
                request.finish(None, RequestCancelled(f"request {request.rid} was cancelled"))

    def _forward(self) -> bool:
        """One forward over the decode batch and this step's prefill chunks; returns whether
        it ran."""
        decode = list(self._active)
        chunks, budget = [], self.prefill_budget
        for request in self._filling:
            if budget <= 0:
                break
            take = min(request.prompt_len - request.filled, budget)
            chunks.append((request, request.filled, take))
            budget -= take
        if not decode and not chunks:
            return False
        completing = [r for r, start, take in chunks if start + take == r.prompt_len]
        carried = decode + [r for r, _, _ in chunks]
        try:
            logits = None
            if not chunks and self.static_decode is not None:  # None: a shape beyond its buckets
                logits = self.static_decode.decode([r.ids[-1] for r in decode],
                                                   [len(r.ids) - 1 for r in decode])
                self.static_steps += logits is not None
            if logits is None:
                logits = self._eager(decode, chunks)
        except Exception as error:
            LOG.exception("forward of %d decoding and %d prefilling sequences failed",
                          len(decode), len(chunks))
            self._fail(carried, error)
            return True
        for request, start, take in chunks:
            request.filled = start + take
            self.prefilled_ids += take
        self._filling = [r for r in self._filling if r.filled < r.prompt_len]
        self._active += completing
        if decode or completing:
            self._accept(decode + completing, logits)
        return True

    def _eager(self, decode: list, chunks: list) -> torch.Tensor:
        """Logits of the decode rows, then of the last id of each completing prompt."""
        ids = [r.ids[-1] for r in decode]
        rows = list(range(len(decode)))
        segments = []
        for request, start, take in chunks:
            segments.append((request.slot, start, take))
            ids += request.ids[start: start + take]
            if start + take == request.prompt_len:
                rows.append(len(ids) - 1)
        plan = self.model.plan(self.cache, [len(r.ids) - 1 for r in decode], segments,
                               logits_rows=rows)
        return self.model.run(torch.tensor(ids, dtype=torch.long), self.cache, plan)

    @staticmethod
    def _fail(requests: list, error: BaseException) -> None:
        for request in requests:
            if not request.done:
                request.finish(None, error)

    def _accept(self, requests: list, logits: torch.Tensor) -> None:
        """Choose each request's next id (row i of `logits` is requests[i]), stream the
        previous one, finish those whose stop condition holds."""
        try:
            tokens = next_tokens(logits, [r.ids for r in requests], [r.params for r in requests],
                                 [r.rng for r in requests])
        except Exception as error:
            LOG.exception("sampling of %d sequences failed", len(requests))
            self._fail(requests, error)
            return
        self.generated_ids += len(tokens)
        for request, token in zip(requests, tokens):
            try:
                self._append(request, token)
            except Exception as error:
                LOG.exception("request %d failed", request.rid)
                request.finish(None, error)

    @staticmethod
    def _append(request: _Request, token: int) -> None:
        request.ids.append(token)
        if request.held is not None and request.on_token is not None:
            request.on_token([request.held])
        request.held = token
        if is_finished(request.ids, request.params):
            result = final_output(request.ids[request.prompt_len:], request.params)
            if len(result) == len(request.ids) - request.prompt_len and request.on_token:
                request.on_token([token])
            request.finish(result, None)

    def _retire(self) -> None:
        """Drop finished sequences; lay the others out in slots 0..: the decoding ones first,
        then the prefilling ones, moving cached ids where a slot changes."""
        self._active = [r for r in self._active if not r.done]
        self._filling = [r for r in self._filling if not r.done]
        moves, length = [], 0
        for slot, request in enumerate(self._active + self._filling):
            cached = len(request.ids) - 1 if request.filled == request.prompt_len else request.filled
            if request.slot != slot and request.slot >= 0 and cached > 0:
                moves.append((request.slot, slot))
                length = max(length, cached)
            request.slot = slot
        self.cache.permute(moves, length)
        if not self._active and not self._filling:
            with self._cond:
                if not self._pending:
                    self.cache.clear()
