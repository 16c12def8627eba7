"""Batched Step1 generation: equal to each request alone and to the HF-style reference loop,
seeded sampling, the repetition ban, <|EOT|> / max_length stops, streaming and failures."""
from __future__ import annotations

import threading
import time

import pytest
import torch
from conftest import STEP1_PROMPTS as PROMPTS

from python_backends.errors import InvalidInput, RequestCancelled
from python_backends.llm.generator import BatchedGenerator, GeneratorStopped
from python_backends.llm.reference import reference_forward, reference_generate
from python_backends.llm.sampling import SamplingParams, next_token, repetition_banned
from python_backends.llm.step1_model import load_step1

torch.set_num_threads(1)
EOT = 3
GREEDY = SamplingParams(greedy=True, max_length=40)


@pytest.fixture(scope="module")
def alone(step1):
    """Greedy output of each prompt generated on its own."""
    gen = BatchedGenerator(step1, max_active=1)
    return [gen.generate([p], [GREEDY])[0] for p in PROMPTS]


def collect(gen, prompt, params, results, key, tokens=None):
    def on_done(ids, error):
        results[key] = error if error is not None else ids
    on_token = None if tokens is None else (lambda ids: tokens.setdefault(key, []).extend(ids))
    return gen.submit(prompt, params, on_token, on_done)


# --------------------------------------------------------------------------- greedy batching

def test_greedy_alone_equals_reference_generate(alone, ref_weights):
    for prompt, ids in zip(PROMPTS, alone):
        assert ids == reference_generate(ref_weights, prompt, GREEDY)
        assert len(ids) == GREEDY.max_length - len(prompt) - 1  # no EOT: the limit stopped it
        assert len(set(ids)) > len(ids) // 2  # random weights, but not a degenerate loop


def test_requests_joining_at_different_steps_equal_each_alone(step1, alone):
    gen = BatchedGenerator(step1, max_active=3)  # fewer slots than requests: some must wait
    results, streamed = {}, {}
    joins = {0: [0, 1], 2: [2], 5: [3], 6: [4]}  # step number → prompts submitted before it
    step = 0
    while len(results) < len(PROMPTS):
        for i in joins.get(step, []):
            collect(gen, PROMPTS[i], GREEDY, results, i, streamed)
        gen.step()
        assert gen.active_count <= 3
        step += 1
    assert [results[i] for i in range(len(PROMPTS))] == alone
    assert [streamed[i] for i in range(len(PROMPTS))] == alone
    assert gen.active_count == 0 and gen.cache.capacity == 0  # idle: cache memory released


def test_concurrent_submits_on_the_background_thread(step1, alone):
    gen = BatchedGenerator(step1, max_active=16)
    gen.start()
    try:
        results = {}
        threads = [threading.Thread(target=collect, args=(gen, p, GREEDY, results, i))
                   for i, p in enumerate(PROMPTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert gen.generate(PROMPTS[:2], [GREEDY, GREEDY]) == alone[:2]
        for _ in range(600):
            if len(results) == len(PROMPTS):
                break
            time.sleep(0.05)
    finally:
        gen.stop()
    assert [results[i] for i in range(len(PROMPTS))] == alone


# --------------------------------------------------------------------------- sampling

def test_seeded_sampling_is_reproducible_and_batch_independent(step1, ref_weights):
    gen = BatchedGenerator(step1, max_active=8)
    seeded = [SamplingParams(seed=s, max_length=36) for s in (11, 11, 12)]
    prompt = PROMPTS[0]
    a, b, c = gen.generate([prompt] * 3, seeded)
    assert a == b and a != c
    assert len(a) == 36 - len(prompt) - 1
    # in a batch with other requests, and in the HF-style reference loop: the same ids
    batch = gen.generate(PROMPTS[1:] + [prompt], [GREEDY] * 4 + [seeded[0]])
    assert batch[-1] == a
    assert reference_generate(ref_weights, prompt, seeded[0]) == a
    assert reference_generate(ref_weights, prompt, seeded[2]) == c


def test_unseeded_requests_differ(step1):
    gen = BatchedGenerator(step1, max_active=2)
    params = SamplingParams(max_length=30)
    x, y = gen.generate([PROMPTS[0]] * 2, [params, params])
    assert x != y


def test_ban_unit_newest_id_repeated_in_last_10():
    logits = torch.zeros(100)
    logits[42] = 50.0
    window = [1, 2, 42, 3, 4, 5, 6, 7, 8, 42]  # newest 42 occurs twice
    assert repetition_banned(window) == 42
    assert repetition_banned([42] + list(range(3, 12)) + [42]) is None  # 11 ids: first 42 is out
    assert repetition_banned(window[1:]) is None  # shorter than the window: no ban
    greedy = SamplingParams(greedy=True)
    assert next_token(logits, window, greedy, None) != 42
    assert next_token(logits, window[:-1] + [9], greedy, None) == 42
    for seed in range(50):
        params = SamplingParams(seed=seed)
        assert next_token(logits, window, params, params.new_generator("cpu")) != 42
        assert next_token(logits, window[1:], params, params.new_generator("cpu")) == 42


def test_ban_in_generation_with_all_equal_logits(step1, tiny_step1_dir, ref_weights):
    """With the final norm zeroed every logit is 0: argmax is id 0 unless banned. The ban turns
    0,0,0,... into 0,0,1,0,1,0,... (0 banned once it repeats; 1 when it repeats)."""
    flat = load_step1(tiny_step1_dir)
    with torch.no_grad():
        flat.model.norm.weight.zero_()
    prompt = list(range(5, 15))
    params = SamplingParams(greedy=True, max_length=len(prompt) + 9)
    expected = [0, 0, 1, 0, 1, 0, 1, 0]  # 9 generated, the last dropped
    assert BatchedGenerator(flat).generate([prompt], [params]) == [expected]
    assert reference_generate(flat, prompt, params) == expected


# --------------------------------------------------------------------------- stops

def test_max_length_stop_drops_the_last_id_like_the_original(step1, alone):
    prompt, full = PROMPTS[1], alone[1]
    gen = BatchedGenerator(step1)
    limit = len(prompt) + 6
    results, streamed = {}, {}
    collect(gen, prompt, SamplingParams(greedy=True, max_length=limit), results, "orig", streamed)
    collect(gen, prompt, SamplingParams(greedy=True, max_length=limit, drop_last=False),
            results, "keep", streamed)
    while gen.step():
        pass
    assert results["orig"] == streamed["orig"] == full[:5]
    assert results["keep"] == streamed["keep"] == full[:6]


def test_eot_stops_and_is_dropped(tiny_step1_dir, alone, ref_weights):
    """Swap lm_head rows of <|EOT|> and the k-th greedy id: generation now ends there."""
    prompt, full = PROMPTS[0], alone[0]
    k = next(i for i in range(2, len(full)) if full[i] not in full[:i] + prompt)
    swapped = load_step1(tiny_step1_dir)
    with torch.no_grad():
        head = swapped.lm_head.weight
        head[[EOT, full[k]]] = head[[full[k], EOT]].clone()
    gen = BatchedGenerator(swapped)
    results, streamed = {}, {}
    for drop_last in (True, False):
        collect(gen, prompt, SamplingParams(greedy=True, max_length=40, drop_last=drop_last),
                results, drop_last, streamed)
    while gen.step():
        pass
    assert results[True] == results[False] == streamed[True] == streamed[False] == full[:k]
    assert reference_generate(swapped, prompt, GREEDY) == full[:k]


# --------------------------------------------------------------------------- input and failures

def test_bad_input_is_refused_at_submit(step1):
    gen = BatchedGenerator(step1)

    def submit(prompt, **kw):
        gen.submit(prompt, SamplingParams(**kw), None, lambda ids, err: None)

    with pytest.raises(InvalidInput, match=r"input 'input_ids': is empty"):
        submit([])
    with pytest.raises(InvalidInput, match=r"input 'input_ids': holds id 74752; allowed: ids "
                                           r"in \[0, 74752\)"):
        submit([1, 74752])
    with pytest.raises(InvalidInput, match=r"input 'input_ids': has 5 ids; allowed: fewer than "
                                           r"max_length \(5\)"):
        submit([1, 2, 3, 4, 5], max_length=5)
    with pytest.raises(InvalidInput, match=r"input 'temperature': is 0"):
        SamplingParams(temperature=0)
    with pytest.raises(InvalidInput, match=r"input 'top_k': is -1"):
        SamplingParams(top_k=-1)
    with pytest.raises(InvalidInput, match=r"input 'seed': is -3"):
        SamplingParams(seed=-3)
    assert gen.pending_count == 0


def test_defaults_are_the_original_sampling():
    params = SamplingParams()
    assert (params.temperature, params.top_k, params.greedy, params.max_length,
            params.drop_last) == (0.7, 50, False, 8192, True)


def test_a_failing_callback_ends_only_its_request(step1, alone):
    gen = BatchedGenerator(step1)
    results = {}

    def explode(ids):
        raise RuntimeError("client went away")

    gen.submit(PROMPTS[0], GREEDY, explode, lambda ids, err: results.__setitem__("bad", err))
    collect(gen, PROMPTS[1], GREEDY, results, "good")
    while gen.step():
        pass
    assert isinstance(results["bad"], RuntimeError) and str(results["bad"]) == "client went away"
    assert results["good"] == alone[1]


def test_stop_ends_unfinished_requests(step1):
    gen = BatchedGenerator(step1)
    results = {}
    collect(gen, PROMPTS[0], GREEDY, results, "a")
    gen.step()
    collect(gen, PROMPTS[1], GREEDY, results, "b")
    gen.stop()
    assert isinstance(results["a"], GeneratorStopped) and isinstance(results["b"], GeneratorStopped)
    assert gen.active_count == gen.pending_count == 0


# --------------------------------------------------------------------------- CUDA (lent GPU only)

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_generation_matches_cpu(tiny_step1_dir, alone, ref_weights):
    cuda = load_step1(tiny_step1_dir, device="cuda")
    logits = cuda(torch.tensor([PROMPTS[0]]), cuda.new_cache(1), 0, [0], all_logits=True)[0]
    reference, _ = reference_forward(ref_weights, PROMPTS[0])
    torch.testing.assert_close(logits.cpu(), reference, rtol=0, atol=1e-4)
    gen = BatchedGenerator(cuda, max_active=4)
    assert gen.generate(PROMPTS, [GREEDY] * len(PROMPTS)) == alone
    seeded = SamplingParams(seed=7, max_length=30)
    first = gen.generate([PROMPTS[0]], [seeded])[0]
    assert gen.generate(PROMPTS[:3], [GREEDY, seeded, GREEDY])[1] == \
        gen.generate([PROMPTS[1]], [seeded])[0]
    assert gen.generate([PROMPTS[0]], [seeded])[0] == first


def test_cancelled_request_ends_and_frees_its_slot(step1, alone):
    """A request whose cancelled() turns true ends with RequestCancelled at the next check and
    leaves its slot; the others are unaffected."""
    gen = BatchedGenerator(step1, max_active=2, cancel_check_steps=2)
    polls = []
    done = {}

    def cancelled():
        polls.append(1)
        return len(polls) >= 3

    long = SamplingParams(greedy=True, max_length=len(PROMPTS[0]) + 500)
    gen.submit(PROMPTS[0], long, None, lambda ids, error: done.update(long=(ids, error)),
               cancelled=cancelled)
    gen.submit(PROMPTS[1], GREEDY, None, lambda ids, error: done.update(short=(ids, error)))
    steps = 0
    while gen.step():
        steps += 1
    ids, error = done["long"]
    assert ids is None and isinstance(error, RequestCancelled)
    assert done["short"] == (alone[1], None)
    assert gen.active_count == 0 and steps < GREEDY.max_length


def test_finished_requests_are_never_polled(step1):
    """A request that ends in its prefill (max_length = prompt + 1) is never asked cancelled()
    again: Triton 2.51 crashes when a sender is asked after its final response."""
    gen = BatchedGenerator(step1, max_active=4, cancel_check_steps=1)
    polls, results = [], []
    for i in range(24):
        one = SamplingParams(greedy=True, max_length=len(PROMPTS[0]) + 1)
        finished = []

        def probe(finished=finished, i=i):
            polls.append((i, bool(finished)))
            return False

        gen.submit(PROMPTS[0], one, None,
                   lambda ids, error, finished=finished: (finished.append(1), results.append((ids, error))),
                   cancelled=probe)
        while gen.step():
            pass
    assert results == [([], None)] * 24
    assert polls and not [p for p in polls if p[1]]  # polled before its prefill, never after


def test_cancel_by_key_stops_running_waiting_and_early_requests(step1, alone):
    gen = BatchedGenerator(step1, max_active=1)
    done = {}
    long = SamplingParams(greedy=True, max_length=len(PROMPTS[0]) + 500)

    def end(name):
        return lambda ids, error: done.update({name: (ids, error)})

    gen.submit(PROMPTS[0], long, None, end("running"), key="a")
    gen.submit(PROMPTS[0], long, None, end("waiting"), key="b")  # no free slot: pending
    gen.step()
    gen.step()
    assert gen.active_count == 1 and gen.pending_count == 1
    assert gen.cancel("b") and gen.cancel("a")
    gen.step()
    assert gen.active_count == 0 and gen.pending_count == 0
    assert isinstance(done["running"][1], RequestCancelled) and done["running"][0] is None
    assert isinstance(done["waiting"][1], RequestCancelled)
    assert not gen.cancel("c")  # not here yet: remembered
    gen.submit(PROMPTS[1], GREEDY, None, end("early"), key="c")
    gen.submit(PROMPTS[1], GREEDY, None, end("other"), key="d")
    while gen.step():
        pass
    assert isinstance(done["early"][1], RequestCancelled)
    assert done["other"] == (alone[1], None)


def test_on_step_reports_active_pending_and_generated_ids(step1):
    seen = []
    gen = BatchedGenerator(step1, max_active=1, on_step=lambda *a: seen.append(a))
    gen.start()
    try:
        ten = SamplingParams(greedy=True, max_length=len(PROMPTS[0]) + 10)
        assert [len(r) for r in gen.generate([PROMPTS[0], PROMPTS[0]], [ten, ten])] == [9, 9]
    finally:
        gen.stop()
    assert sum(a[2] for a in seen) == 20 == gen.generated_ids
    assert seen[-1][:2] == (0, 0)
