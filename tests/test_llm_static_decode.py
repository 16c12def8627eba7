"""The static-shape decode step behind the CUDA-graph path, checked on the CPU without a graph
(`capture=False` runs the very step a graph would capture): bucket choice, eager fallback,
padded rows confined to the scratch slot, a cache that never moves, ids equal to the eager
path's. The graphs themselves run on a lent GPU (perf/device_check.py)."""
from __future__ import annotations

import pytest
import torch
from conftest import STEP1_PROMPTS as PROMPTS

from python_backends.llm.generator import BatchedGenerator
from python_backends.llm.sampling import SamplingParams
from python_backends.llm.static_decode import (DecodeBuckets, StaticDecoder, new_static_decoder,
                                               powers_of_two_up_to)

pytestmark = pytest.mark.usefixtures("torch_one_thread")
GREEDY = SamplingParams(greedy=True, max_length=40)


# --------------------------------------------------------------------------- buckets

def test_buckets_are_powers_of_two_up_to_the_limit():
    assert powers_of_two_up_to(16) == (1, 2, 4, 8, 16)
    assert powers_of_two_up_to(12) == (1, 2, 4, 8, 12)
    assert powers_of_two_up_to(8192, 256) == (256, 512, 1024, 2048, 4096, 8192)
    buckets = DecodeBuckets.for_generator(max_active=6, capacity=1000)
    assert buckets == DecodeBuckets((1, 2, 4, 6), (256, 512, 1000))
    assert DecodeBuckets.for_generator(4, 100).key_lengths == (100,)


def test_select_picks_the_smallest_bucket_or_none():
    buckets = DecodeBuckets((1, 2, 4, 8, 16), (256, 512, 1024))
    assert buckets.select(1, 1) == (1, 256)
    assert buckets.select(3, 256) == (4, 256)
    assert buckets.select(5, 257) == (8, 512)
    assert buckets.select(16, 1024) == (16, 1024)
    assert buckets.select(17, 10) is None  # more rows than the largest graph: eager
    assert buckets.select(2, 1025) is None  # longer than the largest key bucket: eager
    assert buckets.select(0, 1) is None
    with pytest.raises(ValueError, match="ascending positive"):
        DecodeBuckets((4, 2), (256,))


def test_the_decoder_refuses_caches_that_could_move_or_have_no_scratch_slot(step1):
    buckets = DecodeBuckets((1, 2), (64,))
    with pytest.raises(ValueError, match="fixed_capacity"):
        StaticDecoder(step1, step1.new_cache(3), buckets, capture=False)
    with pytest.raises(ValueError, match="exceeds the cache's capacity 32"):
        StaticDecoder(step1, step1.new_cache(3, fixed_capacity=32), buckets, capture=False)
    with pytest.raises(ValueError, match="needs 3 cache slots"):
        StaticDecoder(step1, step1.new_cache(2, fixed_capacity=64), buckets, capture=False)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA model"):
        StaticDecoder(step1, step1.new_cache(3, fixed_capacity=64), buckets, capture=True)
    with pytest.raises(ValueError, match="max_active \\+ 1 slots"):
        BatchedGenerator(step1, max_active=4, static_decode=new_static_decoder(step1, 2, 64, False))


# --------------------------------------------------------------------------- the step

def test_static_step_equals_the_eager_step_and_padding_stays_in_the_scratch_slot(step1):
    """Three sequences decode in the 4-row bucket over 64 keys; slot 3 holds a sequence that is
    not in the batch (a prefilling one): padding must not touch it."""
    decoder = new_static_decoder(step1, max_active=4, capacity=64, capture=False)
    cache = decoder.cache
    eager = step1.new_cache(5)
    for slot, prompt in enumerate(PROMPTS[:4]):
        for c in (cache, eager):
            step1(torch.tensor([prompt]), c, slot, [0])
    bystander = cache.data[:, :, 3].clone()
    pointer = cache.data.data_ptr()
    nxt = [70000, 65536, 42]
    positions = [len(p) for p in PROMPTS[:3]]
    static = decoder.decode(nxt, positions)
    reference = step1(torch.tensor([[i] for i in nxt]), eager, 0, positions)
    assert static.shape == (3, step1.config.vocab_size)
    torch.testing.assert_close(static, reference, rtol=0, atol=1e-5)
    assert torch.equal(cache.data[:, :, 3], bystander)  # the padded row wrote into slot 4 only
    torch.testing.assert_close(cache.data[:, :, :3, :, :20], eager.data[:, :, :3, :, :20],
                               rtol=0, atol=1e-6)
    assert cache.data.data_ptr() == pointer and cache.capacity == 64  # never reallocated
    assert decoder.decode([1] * 5, [3] * 5) is None  # 5 rows: beyond the largest bucket
    assert decoder.decode([1], [64]) is None  # 65 keys: beyond the cache


def test_generation_through_the_static_path_equals_eager_greedy_and_seeded(step1):
    seeded = [SamplingParams(seed=20 + i, max_length=36) for i in range(len(PROMPTS))]
    for params in ([GREEDY] * len(PROMPTS), seeded):
        eager = BatchedGenerator(step1, max_active=8).generate(PROMPTS, params)
        decoder = new_static_decoder(step1, max_active=8, capacity=64, capture=False)
        gen = BatchedGenerator(step1, max_active=8, static_decode=decoder)
        pointer = decoder.cache.data.data_ptr()
        assert gen.generate(PROMPTS, params) == eager
        assert gen.static_steps > 20  # every decode-only step ran static (5 rows: bucket 8)
        assert decoder.cache.data.data_ptr() == pointer and decoder.cache.capacity == 64
        # requests joining and leaving, batch sizes 1..5 and back, the cache kept when idle
        assert [gen.generate([p], [s])[0] for p, s in zip(PROMPTS, params)] == eager


def test_rows_beyond_the_buckets_fall_back_to_eager(step1):
    decoder = StaticDecoder(step1, step1.new_cache(9, fixed_capacity=64),
                            DecodeBuckets((1, 2), (64,)), capture=False)
    gen = BatchedGenerator(step1, max_active=8, static_decode=decoder)
    want = BatchedGenerator(step1, max_active=8).generate(PROMPTS, [GREEDY] * len(PROMPTS))
    assert gen.generate(PROMPTS, [GREEDY] * len(PROMPTS)) == want
    # all share max_length 40, so the prompts of 9, 5, 19, 8 and 5 ids decode 30, 34, 20, 31
    # and 34 steps: 3 to 5 rows (eager) up to step 31, then the two 5-id ones alone (static)
    assert gen.static_steps == 3


def test_a_sequence_longer_than_the_fixed_cache_is_refused(step1):
    decoder = new_static_decoder(step1, max_active=2, capacity=16, capture=False)
    gen = BatchedGenerator(step1, max_active=2, static_decode=decoder)
    with pytest.raises(ValueError, match="does not fit the fixed KV cache of 16 positions"):
        gen.generate([PROMPTS[2]], [GREEDY])  # 19 ids
