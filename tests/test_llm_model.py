"""Step1 forward pass, sqrt-ALiBi, checkpoint layout and loader checks on tiny synthetic weights.

The oracle is `python_backends.llm.reference` (plain formulas, no shared attention code).
"""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from build_scripts.synthetic.step1_checkpoint import PRESETS, WEIGHTS_FILE, write_step1_checkpoint
from python_backends.llm.reference import reference_forward
from python_backends.llm.step1_config import Step1Config, TiedEmbeddingsError
from python_backends.llm.step1_model import (INDEX_FILE, alibi_slopes, expected_tensors,
                                             load_step1, sqrt_alibi_bias)

torch.set_num_threads(1)
PROMPTS = [
    [1, 4, 100, 200, 65541, 66536, 3, 4, 77],
    [1, 4, 9, 65536 + 5119, 12],
    [1, 4] + list(range(65600, 65614)) + [3, 4, 5],
]


# --------------------------------------------------------------------------- sqrt-ALiBi

def test_alibi_slopes_48_heads_equal_the_formula():
    slopes = alibi_slopes(48)
    assert slopes.dtype == torch.float32 and slopes.shape == (48,)
    expected = [2 ** (-8 * k / 32) for k in range(1, 33)] + \
               [2 ** (-4 * (2 * k - 1) / 32) for k in range(1, 17)]
    assert slopes.tolist() == torch.tensor(expected, dtype=torch.float32).tolist()
    assert slopes[0].item() == pytest.approx(2 ** -0.25, rel=1e-7)
    assert slopes[31].item() == 2 ** -8
    assert slopes[32].item() == pytest.approx(2 ** -0.125, rel=1e-7)
    assert slopes[47].item() == pytest.approx(2 ** (-124 / 32), rel=1e-7)


def test_alibi_slopes_power_of_two_heads_have_no_extra_branch():
    assert alibi_slopes(8).tolist() == pytest.approx([2 ** -k for k in range(1, 9)], rel=1e-7)


def test_sqrt_alibi_bias_equals_the_formula_for_48_heads():
    positions = torch.tensor([[3, 4], [0, 1]])  # two rows: queries at 3,4 and at 0,1
    bias = sqrt_alibi_bias(alibi_slopes(48), positions, key_len=6, dtype=torch.float32)
    assert bias.shape == (2, 48, 2, 6)
    slopes = alibi_slopes(48).tolist()
    for row in range(2):
        for h in range(48):
            for qi in range(2):
                i = positions[row, qi].item()
                for j in range(6):
                    value = bias[row, h, qi, j].item()
                    if j > i:
                        assert value == float("-inf")
                    else:
                        assert value == pytest.approx(-slopes[h] * math.sqrt(i - j), rel=1e-6,
                                                      abs=1e-7)


# --------------------------------------------------------------------------- forward pass

def test_forward_equals_reference_on_a_whole_prompt(step1, ref_weights):
    for prompt in PROMPTS:
        cache = step1.new_cache(1)
        ours = step1(torch.tensor([prompt]), cache, 0, [0], all_logits=True)[0]
        ref, _ = reference_forward(ref_weights, prompt)
        assert ours.shape == (len(prompt), 74752) and ours.dtype == torch.float32
        torch.testing.assert_close(ours, ref, rtol=0, atol=2e-5)
        assert ref[:, 65536:70656].std() > 1.0  # the synthetic logits are spread, not all equal


def test_chunked_prefill_equals_reference(step1, ref_weights):
    prompt = PROMPTS[2]
    cache = step1.new_cache(2)
    parts = [prompt[:4], prompt[4:11], prompt[11:]]
    start, outs = 0, []
    for part in parts:
        outs.append(step1(torch.tensor([part]), cache, 1, [start],
                          all_logits=True)[0])
        start += len(part)
    ref, _ = reference_forward(ref_weights, prompt)
    torch.testing.assert_close(torch.cat(outs), ref, rtol=0, atol=2e-5)


def test_decode_batch_of_different_lengths_equals_reference_and_each_alone(step1, ref_weights):
    """Three sequences of lengths 9, 5, 19 decode one id each in one batched forward."""
    batch_cache = step1.new_cache(3)
    for slot, prompt in enumerate(PROMPTS):
        step1(torch.tensor([prompt]), batch_cache, slot, [0])
    nxt = [[70000], [65536], [42]]
    batched = step1(torch.tensor(nxt), batch_cache, 0, [len(p) for p in PROMPTS])
    assert batched.shape == (3, 74752)
    for row, prompt in enumerate(PROMPTS):
        ref, _ = reference_forward(ref_weights, prompt + nxt[row])
        torch.testing.assert_close(batched[row], ref[-1], rtol=0, atol=2e-5)
        alone_cache = step1.new_cache(1)
        step1(torch.tensor([prompt]), alone_cache, 0, [0])
        alone = step1(torch.tensor([nxt[row]]), alone_cache, 0, [len(prompt)])
        torch.testing.assert_close(batched[row], alone[0], rtol=0, atol=1e-5)


def test_cache_growth_and_slot_move_keep_the_sequence(step1, ref_weights):
    prompt = PROMPTS[0]
    cache = step1.new_cache(2)
    cache.initial_capacity = 4
    step1(torch.tensor([prompt]), cache, 1, [0])
    assert cache.capacity >= len(prompt)
    cache.permute([(1, 0)], len(prompt))
    out = step1(torch.tensor([[7]]), cache, 0, [len(prompt)])
    ref, _ = reference_forward(ref_weights, prompt + [7])
    torch.testing.assert_close(out[0], ref[-1], rtol=0, atol=2e-5)


def test_bf16_forward_stays_close_to_fp32(tiny_step1_dir, ref_weights):
    bf16 = load_step1(tiny_step1_dir, dtype=torch.bfloat16)
    prompt = PROMPTS[0]
    ours = bf16(torch.tensor([prompt]), bf16.new_cache(1), 0, [0])[0]
    ref, _ = reference_forward(ref_weights, prompt)
    assert ours.dtype == torch.float32
    assert (ours - ref[-1]).abs().max() < 0.25 * ref[-1].std()


# --------------------------------------------------------------------------- checkpoint layout

def test_full_preset_has_the_release_tensor_count_and_parameters():
    shapes = expected_tensors(PRESETS["full"])
    assert len(shapes) == 291
    assert sum(math.prod(s) for s in shapes.values()) == 3_529_706_496
    assert shapes["model.layers.31.self_attn.k_proj.weight"] == (256, 3072)
    assert shapes["lm_head.weight"] == (74752, 3072)


def test_tiny_checkpoint_files_names_and_dtypes(tiny_step1_dir):
    config = json.loads((tiny_step1_dir / "config.json").read_text())
    assert config["architectures"] == ["Step1ForCausalLM"] and config["model_type"] == "step1"
    assert config["tie_word_embeddings"] is False and config["torch_dtype"] == "bfloat16"
    assert (config["vocab_size"], config["eos_token_id"], config["bos_token_id"],
            config["pad_token_id"]) == (74752, 3, 1, 0)
    index = json.loads((tiny_step1_dir / INDEX_FILE).read_text())
    with safe_open(tiny_step1_dir / WEIGHTS_FILE, framework="pt") as f:
        names = set(f.keys())
        assert f.get_tensor("lm_head.weight").dtype == torch.bfloat16
        assert f.metadata() == {"format": "pt"}
    expected = expected_tensors(Step1Config.from_dir(tiny_step1_dir))
    assert names == set(expected) == set(index["weight_map"])
    assert "model.layers.1.mlp.down_proj.weight" in names
    assert not any(n.endswith(".bias") for n in names)


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path, tiny_step1_dir):
    write_step1_checkpoint(tmp_path / "a", "tiny", seed=0)
    write_step1_checkpoint(tmp_path / "b", "tiny", seed=1)
    same = (tmp_path / "a" / WEIGHTS_FILE).read_bytes()
    assert same == (tiny_step1_dir / WEIGHTS_FILE).read_bytes()
    assert same != (tmp_path / "b" / WEIGHTS_FILE).read_bytes()


def test_unknown_preset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown Step1 preset 'huge'"):
        write_step1_checkpoint(tmp_path, "huge", seed=0)


# --------------------------------------------------------------------------- loader refusals

def _copy(tiny_step1_dir, tmp_path):
    out = tmp_path / "ckpt"
    shutil.copytree(tiny_step1_dir, out)
    return out


def _rewrite(ckpt, change):
    """Rewrite the weights file through `change(tensors)`; drop the index."""
    with safe_open(ckpt / WEIGHTS_FILE, framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    change(tensors)
    save_file(tensors, str(ckpt / WEIGHTS_FILE), metadata={"format": "pt"})
    (ckpt / INDEX_FILE).unlink()


def test_tie_word_embeddings_true_is_refused(tiny_step1_dir, tmp_path):
    ckpt = _copy(tiny_step1_dir, tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(TiedEmbeddingsError) as info:
        load_step1(ckpt)
    assert str(ckpt / "config.json") in str(info.value)
    assert "'tie_word_embeddings' is true" in str(info.value)


def test_missing_lm_head_is_refused_as_tied(tiny_step1_dir, tmp_path):
    ckpt = _copy(tiny_step1_dir, tmp_path)
    _rewrite(ckpt, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(TiedEmbeddingsError) as info:
        load_step1(ckpt)
    assert str(ckpt) in str(info.value)
    assert "no 'lm_head.weight' tensor" in str(info.value)
    assert "tie_word_embeddings" in str(info.value)


def test_missing_flag_with_lm_head_loads_untied(tiny_step1_dir, tmp_path):
    ckpt = _copy(tiny_step1_dir, tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    del config["tie_word_embeddings"]
    (ckpt / "config.json").write_text(json.dumps(config))
    model = load_step1(ckpt)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_missing_tensor_is_named(tiny_step1_dir, tmp_path):
    ckpt = _copy(tiny_step1_dir, tmp_path)
    _rewrite(ckpt, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"tensor 'model\.layers\.1\.mlp\.up_proj\.weight' is "
                                         r"missing from the checkpoint"):
        load_step1(ckpt)


def test_wrong_shape_names_tensor_and_file(tiny_step1_dir, tmp_path):
    ckpt = _copy(tiny_step1_dir, tmp_path)
    _rewrite(ckpt, lambda t: t.update({"model.norm.weight": torch.ones(95)}))
    with pytest.raises(ValueError) as info:
        load_step1(ckpt)
    assert str(ckpt / WEIGHTS_FILE) in str(info.value)
    assert "tensor 'model.norm.weight' has shape [95], expected [96]" in str(info.value)


def test_unexpected_bias_tensor_is_refused(tiny_step1_dir, tmp_path):
    ckpt = _copy(tiny_step1_dir, tmp_path)
    _rewrite(ckpt, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(96)}))
    with pytest.raises(ValueError, match=r"unexpected tensor\(s\) "
                                         r"\['model\.layers\.0\.self_attn\.q_proj\.bias'\]"):
        load_step1(ckpt)
