"""Batched and chunked prefill: waiting prompts share a per-step budget of prompt ids, packed
into the same forward as the decode batch; a long prompt spreads over several steps while the
running streams keep decoding; every request's ids equal its ids alone (and the reference's)."""
from __future__ import annotations

import threading

import pytest
import torch
from conftest import STEP1_PROMPTS as PROMPTS

from python_backends.llm.generator import BatchedGenerator
from python_backends.llm.reference import reference_forward, reference_generate
from python_backends.llm.sampling import SamplingParams

pytestmark = pytest.mark.usefixtures("torch_one_thread")
LONG = [1, 4] + [65536 + (37 * k) % 5120 for k in range(58)]  # 60 ids
GREEDY = SamplingParams(greedy=True, max_length=40)


@pytest.fixture(scope="module")
def alone(step1):
    def run(prompt, params=GREEDY):
        return BatchedGenerator(step1, max_active=1).generate([prompt], [params])[0]
    return run


class CountingModel:
    """Counts forwards (`run` calls) and the tokens each carried."""

    def __init__(self, model):
        self.model = model
        self.forwards: list[int] = []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def run(self, ids, cache, plan):
        self.forwards.append(int(ids.numel()))
        return self.model.run(ids, cache, plan)


def submit(gen, prompt, params, done, key, streamed=None):
    on_token = None if streamed is None else (lambda ids: streamed.setdefault(key, []).extend(ids))
    gen.submit(prompt, params, on_token, lambda ids, error: done.__setitem__(key, error or ids))


# --------------------------------------------------------------------------- the forward

def test_one_forward_of_decode_rows_and_prefill_chunks_equals_the_reference(step1, ref_weights):
    """Slots 0, 1 decode one id each while slot 2 prefills a chunk and slot 3 its whole prompt."""
    cache = step1.new_cache(4)
    a, b, c, d = PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[3]
    step1(torch.tensor([a]), cache, 0, [0])
    step1(torch.tensor([b]), cache, 1, [0])
    step1(torch.tensor([c[:6]]), cache, 2, [0])
    ids = [70000, 65536] + c[6:15] + d
    plan = step1.plan(cache, [len(a), len(b)], [(2, 6, 9), (3, 0, len(d))],
                      logits_rows=[0, 1, 10, 10 + len(d)])
    logits = step1.run(torch.tensor(ids), cache, plan)
    expected = [reference_forward(ref_weights, a + [70000])[0][-1],
                reference_forward(ref_weights, b + [65536])[0][-1],
                reference_forward(ref_weights, c[:15])[0][-1],
                reference_forward(ref_weights, d)[0][-1]]
    torch.testing.assert_close(logits, torch.stack(expected), rtol=0, atol=2e-5)
    # and the caches hold what a plain prefill would have written
    check = step1.new_cache(1)
    step1(torch.tensor([c[:15]]), check, 0, [0])
    torch.testing.assert_close(cache.data[:, :, 2, :, :15], check.data[:, :, 0, :, :15],
                               rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- the generator

def test_waiting_prompts_prefill_together_in_one_forward(step1, alone):
    counting = CountingModel(step1)
    gen = BatchedGenerator(counting, max_active=8, prefill_budget=1000)
    done = {}
    for i, prompt in enumerate(PROMPTS):
        submit(gen, prompt, GREEDY, done, i)
    gen.step()
    assert counting.forwards == [sum(map(len, PROMPTS))]  # all five prompts, one forward
    assert gen.prefilling_count == 0 and gen.active_count == len(PROMPTS)
    while gen.step():
        pass
    assert [done[i] for i in range(len(PROMPTS))] == [alone(p) for p in PROMPTS]
    assert gen.prefilled_ids == sum(map(len, PROMPTS))


def test_the_budget_is_shared_first_come_first_served(step1, alone):
    gen = BatchedGenerator(step1, max_active=8, prefill_budget=10)
    done = {}
    for i, prompt in enumerate(PROMPTS[:3]):  # 9, 5 and 19 ids
        submit(gen, prompt, GREEDY, done, i)
    gen.step()
    filling = {r.rid: r.filled for r in gen._filling}
    assert [r.filled for r in gen._active] == [9] and sorted(filling.values()) == [0, 1]
    gen.step()  # the first one decodes; 5 - 1 = 4 ids finish the second, 6 go to the third
    assert [r.filled for r in gen._active] == [9, 5] and [r.filled for r in gen._filling] == [6]
    while gen.step():
        pass
    assert [done[i] for i in range(3)] == [alone(p) for p in PROMPTS[:3]]


def test_a_long_prompt_is_chunked_while_running_streams_keep_decoding(step1, alone, ref_weights):
    budget = 8
    counting = CountingModel(step1)
    gen = BatchedGenerator(counting, max_active=4, prefill_budget=budget)
    done, streamed = {}, {}
    long_params = SamplingParams(seed=3, max_length=len(LONG) + 12)
    submit(gen, PROMPTS[0], GREEDY, done, "running", streamed)
    gen.step()
    gen.step()
    submit(gen, LONG, long_params, done, "long", streamed)
    chunk_steps = -(-len(LONG) // budget)
    for step in range(chunk_steps):
        before = len(streamed.get("running", []))
        gen.step()
        assert len(streamed["running"]) == before + 1  # one id per step, prefill or not
        assert counting.forwards[-1] == 1 + min(budget, len(LONG) - step * budget)
    assert gen.prefilling_count == 0 and "long" not in streamed  # its first id is held back
    while gen.step():
        pass
    assert done["running"] == streamed["running"] == alone(PROMPTS[0])
    assert done["long"] == streamed["long"] == alone(LONG, long_params)
    assert done["long"] == reference_generate(ref_weights, LONG, long_params)


def test_the_background_thread_finishes_a_lone_prompt_longer_than_the_budget(step1, alone):
    """After its first chunk the request is neither waiting nor decoding, only prefilling: the
    thread must keep stepping (llm_stream runs the generator this way)."""
    params = SamplingParams(greedy=True, max_length=len(LONG) + 12)
    gen = BatchedGenerator(step1, max_active=2, prefill_budget=8)
    gen.start()
    finished, done = threading.Event(), {}
    try:
        gen.submit(LONG, params, None, lambda ids, error: (done.update(ids=error or ids), finished.set()))
        assert finished.wait(30), "the thread stopped stepping a prefilling request"
    finally:
        gen.stop()
    assert done["ids"] == alone(LONG, params)


def test_a_cancelled_sequence_leaves_and_a_half_prefilled_one_moves_into_its_slot(step1, alone):
    """Slot 0 decodes; slot 1 finishes its 60-id prompt while slot 2 gets the 6 ids left of the
    budget; slot 1 is cancelled, so slot 2's half-written cache moves to slot 1, and both
    survivors still end with their ids alone."""
    gen = BatchedGenerator(step1, max_active=4, prefill_budget=len(LONG) + 6)
    done = {}
    submit(gen, PROMPTS[1], GREEDY, done, "decoding")
    gen.step()
    long_params = SamplingParams(greedy=True, max_length=len(LONG) + 20)
    gen.submit(LONG, long_params, None, lambda ids, error: done.__setitem__("cancelled", error),
               key="stop-me")
    submit(gen, PROMPTS[2], GREEDY, done, "moved")
    gen.step()
    moved = gen._filling[0]
    assert [r.slot for r in gen._active] == [0, 1] and (moved.slot, moved.filled) == (2, 6)
    assert gen.cancel("stop-me")
    gen.step()
    assert moved.slot == 1 and moved.filled == len(PROMPTS[2])  # moved, then prefilled
    while gen.step():
        pass
    assert type(done["cancelled"]).__name__ == "RequestCancelled"
    assert done["decoding"] == alone(PROMPTS[1])
    assert done["moved"] == alone(PROMPTS[2])


def test_prefill_budget_must_be_positive(step1):
    with pytest.raises(ValueError, match="prefill_budget is 0; it must be >= 1"):
        BatchedGenerator(step1, prefill_budget=0)
