"""The CPU runtime of Step1: oneDNN-prepacked Linear layers (bit-identical to F.linear in
bfloat16, float32 left on F.linear), and Intel OpenMP switched in before torch is imported."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import STEP1_PROMPTS as PROMPTS

from python_backends.llm import cpu_runtime
from python_backends.llm.generator import BatchedGenerator
from python_backends.llm.reference import reference_weights
from python_backends.llm.sampling import SamplingParams
from python_backends.llm.step1_model import PackedLinear, can_pack, load_step1

pytestmark = pytest.mark.usefixtures("torch_one_thread")
BF16 = torch.bfloat16
needs_bf16 = pytest.mark.skipif(not can_pack("cpu", BF16), reason="no oneDNN bf16 kernels")


@pytest.fixture(scope="module")
def plain(tiny_step1_dir):
    return load_step1(tiny_step1_dir, dtype=BF16)


@pytest.fixture(scope="module")
def packed(tiny_step1_dir):
    return load_step1(tiny_step1_dir, dtype=BF16, pack=True)


# --------------------------------------------------------------------------- PackedLinear

@needs_bf16
@pytest.mark.parametrize("rows", [1, 3, 4, 16, 130])
def test_packed_linear_is_bit_identical_to_f_linear(rows):
    gen = torch.Generator().manual_seed(rows)
    weights = [torch.randn(n, 96, generator=gen).to(BF16) for n in (96, 32, 32)]
    x = torch.randn(rows, 96, generator=gen).to(BF16)
    one = PackedLinear(weights[:1])
    assert torch.equal(one(x), F.linear(x, weights[0]))
    merged = PackedLinear(weights)  # q, k, v as one product: column slices of it
    parts = merged(x).split(merged.splits, dim=-1)
    for part, w in zip(parts, weights):
        assert torch.equal(part, F.linear(x, w))
    assert torch.equal(merged(x[None])[0], merged(x))  # [b, q, in] inputs too


@needs_bf16
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7])
def test_padded_packed_linear_runs_the_four_row_kernel(rows):
    """min_rows=4: fewer rows are computed as the first rows of a zero-padded 4-row product
    (oneDNN's faster kernel; at this size its rounding can differ from the 1-row kernel's), more
    rows as they are."""
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(512, 3072, generator=gen).to(BF16)
    x = torch.randn(rows, 3072, generator=gen).to(BF16)
    padded = F.pad(x, (0, 0, 0, max(0, 4 - rows)))
    assert torch.equal(PackedLinear([weight], min_rows=4)(x), F.linear(padded, weight)[:rows])
    assert torch.equal(PackedLinear([weight])(x), F.linear(x, weight))


@needs_bf16
def test_padding_leaves_products_of_four_rows_or_more_alone(tiny_step1_dir, plain):
    padded = load_step1(tiny_step1_dir, dtype=BF16, pack=True, pad_rows=4)
    linears = [m for m in padded.modules() if isinstance(m, PackedLinear)]
    assert len(linears) == 4 * padded.config.num_hidden_layers + 1
    assert {m.min_rows for m in linears} == {4}
    for prompt in PROMPTS:  # 5 ids or more: no padding, the plain model's logits bit for bit
        a = plain(torch.tensor([prompt]), plain.new_cache(1), 0, [0], all_logits=True)
        assert torch.equal(padded(torch.tensor([prompt]), padded.new_cache(1), 0, [0],
                                  all_logits=True), a)


@needs_bf16
def test_packed_model_logits_and_cache_equal_the_plain_model_bit_for_bit(plain, packed):
    assert packed.packed and not plain.packed
    for prompt in PROMPTS:
        caches = plain.new_cache(1), packed.new_cache(1)
        a = plain(torch.tensor([prompt]), caches[0], 0, [0], all_logits=True)
        b = packed(torch.tensor([prompt]), caches[1], 0, [0], all_logits=True)
        assert torch.equal(a, b) and torch.equal(caches[0].data, caches[1].data)


@needs_bf16
def test_packed_generation_equals_the_plain_one(plain, packed):
    greedy = SamplingParams(greedy=True, max_length=40)
    seeded = [SamplingParams(seed=s, max_length=36) for s in range(len(PROMPTS))]
    for params in ([greedy] * len(PROMPTS), seeded):
        want = BatchedGenerator(plain, max_active=8).generate(PROMPTS, params)
        assert BatchedGenerator(packed, max_active=8).generate(PROMPTS, params) == want
    # batch 1 too (a one-row product runs another oneDNN kernel than a batch's). The bf16 ids
    # are not compared with the HF-style reference here: its explicit softmax attention rounds
    # differently from SDPA in bf16 with or without packing (the float32 tests pin that)
    for prompt in PROMPTS:
        want = BatchedGenerator(plain, max_active=1).generate([prompt], [greedy])
        assert BatchedGenerator(packed, max_active=1).generate([prompt], [greedy]) == want


@needs_bf16
def test_packing_frees_the_dense_weights_and_keeps_the_byte_count(plain, packed):
    names = {name for name, _ in packed.named_parameters()}
    assert not any(n.endswith(("_proj.weight", "lm_head.weight")) for n in names)
    assert {"model.embed_tokens.weight", "model.norm.weight"} <= names
    assert packed.weight_bytes_per_step() == plain.weight_bytes_per_step()
    with pytest.raises(ValueError, match="packed Step1Model has no dense weights"):
        reference_weights(packed)


def test_float32_is_never_packed(tiny_step1_dir):
    """fp32 keeps MKL's F.linear: oneDNN's fp32 kernels round differently, and the float32
    ids are pinned to today's and to the reference's (tests/test_llm_generation.py)."""
    assert not can_pack("cpu", torch.float32)
    assert not load_step1(tiny_step1_dir, pack=True).packed
    with pytest.raises(ValueError, match="no packed kernels"):
        load_step1(tiny_step1_dir).pack()


# --------------------------------------------------------------------------- Intel OpenMP

def _python(code: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("LD_PRELOAD", cpu_runtime.OPENMP_ENV, "KMP_BLOCKTIME")}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environ,
                          capture_output=True, text=True, timeout=120)


SWITCH_THEN_TORCH = """
    from python_backends.llm import cpu_runtime
    runtime = cpu_runtime.use_intel_openmp()
    import os, torch
    torch.set_num_threads(2)
    torch.ones(1 << 20).sum()  # a parallel region: Intel's runtime starts (and prints settings)
    print("RUNTIME", runtime, cpu_runtime.openmp_runtime(), os.environ.get("KMP_BLOCKTIME"))
"""


@pytest.mark.skipif(cpu_runtime.intel_openmp_path() is None, reason="intel-openmp not installed")
def test_use_intel_openmp_before_torch_runs_torch_on_libiomp5():
    out = _python(SWITCH_THEN_TORCH, KMP_SETTINGS="1")
    assert out.returncode == 0, out.stderr
    assert "RUNTIME intel intel 1" in out.stdout
    # KMP_SETTINGS is read by Intel's runtime only: its report proves torch's parallel region
    # ran on it (GNU OpenMP ignores the variable)
    assert "KMP_SETTINGS" in out.stderr and "KMP_BLOCKTIME" in out.stderr


def test_gnu_choice_or_a_late_call_keeps_gnu_openmp():
    out = _python(SWITCH_THEN_TORCH, KMP_SETTINGS="1", STEP_AUDIO_OPENMP="gnu")
    assert out.returncode == 0, out.stderr
    assert "RUNTIME gnu gnu None" in out.stdout and "KMP_SETTINGS" not in out.stderr
    late = _python("""
        import torch
        from python_backends.llm import cpu_runtime
        print("RUNTIME", cpu_runtime.use_intel_openmp())
    """)
    assert "RUNTIME gnu" in late.stdout, late.stderr


def test_bad_runtime_choice_is_refused(monkeypatch):
    monkeypatch.setenv(cpu_runtime.OPENMP_ENV, "llvm")
    with pytest.raises(ValueError, match="STEP_AUDIO_OPENMP is 'llvm'; allowed: intel, gnu"):
        cpu_runtime.wanted_runtime()
