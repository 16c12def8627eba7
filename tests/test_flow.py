"""The CosyVoice flow (python_backends.decoder.flow) on tiny synthetic weights: the batched
solver equals the plain one-request reference, each request of a batch equals running it alone,
the output has 2 mel frames per token row, flow.pt / cosyvoice.yaml / the noise buffer load by
their real names with clear errors, and the DiT estimator exports to ONNX."""
from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from build_scripts.synthetic.flow_checkpoint import (base_yaml_sections, flow_state_dict,
                                                     flow_yaml_section, write_flow)
from python_backends.decoder.cosyvoice_yaml import (CosyVoiceYamlError, Ref, load_cosyvoice_yaml,
                                                    loads_cosyvoice_yaml, write_cosyvoice_yaml)
from python_backends.decoder.flow import (CausalMaskedDiffWithXvec, flow_config_from_yaml,
                                          flow_inference, load_flow)
from python_backends.decoder.reference import reference_flow

SEED = 7


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def write_tiny_dir(path):
    write_flow(path, "tiny", SEED)
    write_cosyvoice_yaml(path / "cosyvoice.yaml",
                         {**base_yaml_sections(), "flow": flow_yaml_section("tiny")})
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_dir(tmp_path_factory.mktemp("cosyvoice"))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_flow(tiny_dir)


def make_batch(prompt_lens, token_lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, p_max, r_max = len(prompt_lens), max(prompt_lens), max(token_lens)
    return dict(
        token_rows=torch.randint(0, 5121, (b, r_max, 2), generator=g),
        token_lens=torch.tensor(token_lens),
        prompt_rows=torch.randint(0, 5121, (b, p_max, 2), generator=g),
        prompt_lens=torch.tensor(prompt_lens),
        prompt_mel=torch.randn(b, 2 * p_max, 80, generator=g) * 2 - 5,
        spk_embedding=torch.randn(b, 192, generator=g) * 3,
    )


def request(batch, i):
    """Request i of a batch, un-padded, as a batch of one."""
    p, r = int(batch["prompt_lens"][i]), int(batch["token_lens"][i])
    return dict(token_rows=batch["token_rows"][i:i + 1, :r], token_lens=batch["token_lens"][i:i + 1],
                prompt_rows=batch["prompt_rows"][i:i + 1, :p],
                prompt_lens=batch["prompt_lens"][i:i + 1],
                prompt_mel=batch["prompt_mel"][i:i + 1, :2 * p],
                spk_embedding=batch["spk_embedding"][i:i + 1])


def test_batched_flow_equals_reference_per_request(tiny):
    batch = make_batch(prompt_lens=[6, 3, 9], token_lens=[11, 4, 7])
    mel, mel_lens = flow_inference(tiny.model, **batch, noise=tiny.noise)
    assert mel.dtype == torch.float32 and mel.shape == (3, 80, 22)
    assert mel_lens.tolist() == [22, 8, 14]
    for i in range(3):
        one = request(batch, i)
        ref = reference_flow(tiny.model, one["token_rows"][0], one["prompt_rows"][0],
                             one["prompt_mel"][0], one["spk_embedding"][0], tiny.noise)
        assert ref.shape == (80, int(mel_lens[i]))
        torch.testing.assert_close(mel[i, :, :mel_lens[i]], ref, rtol=1e-5, atol=1e-5)
        assert torch.all(mel[i, :, mel_lens[i]:] == 0)
        assert float(ref.std()) > 0.3  # random weights still give a non-degenerate mel


def test_each_request_of_a_batch_equals_running_it_alone(tiny):
    batch = make_batch(prompt_lens=[2, 12, 5, 7], token_lens=[15, 3, 9, 1], seed=1)
    mel, mel_lens = flow_inference(tiny.model, **batch, noise=tiny.noise)
    for i in range(4):
        alone, alone_lens = flow_inference(tiny.model, **request(batch, i), noise=tiny.noise)
        assert alone_lens.tolist() == [mel_lens[i]]
        assert (mel[i, :, :mel_lens[i]] - alone[0]).abs().max() <= 1e-5


@pytest.mark.parametrize("rows", [1, 2, 5, 13])
def test_two_mel_frames_per_token_row(tiny, rows):
    batch = make_batch(prompt_lens=[4], token_lens=[rows], seed=rows)
    mel, mel_lens = flow_inference(tiny.model, **batch, noise=tiny.noise)
    assert mel.shape == (1, 80, 2 * rows) and mel_lens.tolist() == [2 * rows]


def test_start_noise_is_the_buffer_prefix(tiny):
    batch = make_batch(prompt_lens=[3], token_lens=[5], seed=2)
    frames = 2 * (3 + 5)
    mel, _ = flow_inference(tiny.model, **batch, noise=tiny.noise)
    tail_changed = tiny.noise.clone()
    tail_changed[:, :, frames:] = 0  # frames past the request are never read
    same, _ = flow_inference(tiny.model, **batch, noise=tail_changed)
    assert torch.equal(mel, same)
    head_changed = tiny.noise.clone()
    head_changed[:, :, :frames] *= -1
    other, _ = flow_inference(tiny.model, **batch, noise=head_changed)
    assert (other - mel).abs().max() > 0.1
    with pytest.raises(ValueError, match=r"noise must be \[1, 80, ≥16\]"):
        flow_inference(tiny.model, **batch, noise=tiny.noise[:, :, :frames - 1])


def test_speaker_embedding_is_l2_normalised(tiny):
    batch = make_batch(prompt_lens=[4], token_lens=[6], seed=3)
    mel, _ = flow_inference(tiny.model, **batch, noise=tiny.noise)
    scaled, _ = flow_inference(tiny.model, **{**batch, "spk_embedding": batch["spk_embedding"] * 5},
                               noise=tiny.noise)
    torch.testing.assert_close(mel, scaled, rtol=0, atol=1e-5)
    other = make_batch(prompt_lens=[4], token_lens=[6], seed=4)["spk_embedding"]
    changed, _ = flow_inference(tiny.model, **{**batch, "spk_embedding": other}, noise=tiny.noise)
    assert (changed - mel).abs().max() > 0.01


def test_bad_ids_and_lengths_are_refused(tiny):
    batch = make_batch(prompt_lens=[2], token_lens=[3])
    bad_ids = batch["token_rows"].clone()
    bad_ids[0, 0, 1] = 5121
    with pytest.raises(ValueError, match="token_rows ids must be < 5121"):
        flow_inference(tiny.model, **{**batch, "token_rows": bad_ids}, noise=tiny.noise)
    with pytest.raises(ValueError, match="lengths must lie within the padded inputs"):
        flow_inference(tiny.model, **{**batch, "token_lens": torch.tensor([4])}, noise=tiny.noise)


# ------------------------------------------------------------------ files and cosyvoice.yaml

def test_cosyvoice_yaml_round_trip(tmp_path):
    sections = {**base_yaml_sections(), "flow": flow_yaml_section("tiny"),
                "hift": {"__class__": "stepvocoder.cosyvoice2.hifigan.generator.HiFTGenerator",
                         "sampling_rate": Ref("<sample_rate>"), "upsample_rates": [8, 5, 3]}}
    path = write_cosyvoice_yaml(tmp_path / "cosyvoice.yaml", sections)
    text = path.read_text()
    assert "flow: !new:stepvocoder.cosyvoice2.flow.flow.CausalMaskedDiffWithXvec\n" in text
    assert "__set_seed3: !apply:torch.manual_seed [1986]\n" in text
    loaded = load_cosyvoice_yaml(path)
    assert list(loaded) == list(sections)
    assert loaded["mel_conf"]["sampling_rate"] == 24000
    assert loaded["hift"] == {**sections["hift"], "sampling_rate": 24000}
    assert loaded["flow"] == sections["flow"]
    assert loaded["__set_seed1"] == {"__apply__": "random.seed", "args": [1986]}


def test_hyperpyyaml_style_text_parses():
    text = """
sample_rate: 24000
token_mel_ratio: 2
half: !ref <sample_rate> // 2
flow: !new:cosyvoice2.flow.flow.CausalMaskedDiffWithXvec
    output_size: 80
    ratio: !ref <token_mel_ratio>
    act: !name:torch.nn.SiLU
    relu: !new:torch.nn.ReLU
copy: !ref <flow[output_size]>
"""
    doc = loads_cosyvoice_yaml(text)
    assert doc["half"] == 12000 and doc["copy"] == 80
    assert doc["flow"] == {"__class__": "cosyvoice2.flow.flow.CausalMaskedDiffWithXvec",
                           "output_size": 80, "ratio": 2,
                           "act": {"__partial__": "torch.nn.SiLU"},
                           "relu": {"__class__": "torch.nn.ReLU"}}
    with pytest.raises(CosyVoiceYamlError, match=r"!ref <nope>: no key 'nope'"):
        loads_cosyvoice_yaml("a: !ref <nope>\n")


def test_flow_pt_missing_a_tensor_names_it(tmp_path):
    root = write_tiny_dir(tmp_path)
    state = torch.load(root / "flow.pt", weights_only=True)
    del state["decoder.estimator.blocks.1.attn.k_norm.weight"]
    state["encoder_proj.bias"] = torch.zeros(81)
    torch.save(state, root / "flow.pt")
    with pytest.raises(ValueError) as err:
        load_flow(root)
    message = str(err.value)
    assert str(root / "flow.pt") in message
    assert "missing tensor(s): decoder.estimator.blocks.1.attn.k_norm.weight" in message
    assert "wrong shape: encoder_proj.bias (81,) (expected (80,))" in message


def test_missing_noise_buffer_is_explained(tmp_path):
    root = write_tiny_dir(tmp_path)
    (root / "flow_noise.npy").unlink()
    with pytest.raises(FileNotFoundError, match="flow start-noise buffer is missing"):
        load_flow(root)


def test_unsupported_yaml_settings_are_refused():
    flow = flow_yaml_section("tiny")
    with pytest.raises(ValueError, match=r"flow.encoder.input_layer='conv2d' is not supported"):
        flow_config_from_yaml({"flow": {**flow, "encoder": {**flow["encoder"],
                                                            "input_layer": "conv2d"}}})
    with pytest.raises(ValueError, match=r"flow.decoder.estimator must be a !new:…DiT object"):
        flow_config_from_yaml({"flow": {**flow, "decoder": {**flow["decoder"], "estimator": {
            "__class__": "cosyvoice.flow.decoder.ConditionalDecoder"}}}})


def test_synthetic_weights_are_seeded_and_full_has_release_size():
    a, b = flow_state_dict("tiny", SEED), flow_state_dict("tiny", SEED)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder_proj.weight"], flow_state_dict("tiny", SEED + 1)["encoder_proj.weight"])
    with torch.device("meta"):
        full = CausalMaskedDiffWithXvec(flow_config_from_yaml({"flow": flow_yaml_section("full")}))
    assert sum(p.numel() for p in full.parameters()) == 153_754_096
    assert full.state_dict()["decoder.estimator.blocks.15.adaLN_modulation.1.weight"].shape == (4608, 512)


# ------------------------------------------------------------------ export

def test_estimator_exports_to_onnx_with_dynamic_batch_and_time(tiny, tmp_path):
    estimator = tiny.model.decoder.estimator
    g = torch.Generator().manual_seed(5)

    def inputs(frames):
        mask = torch.ones(2, 1, frames)
        mask[1, :, frames - 3:] = 0
        return (torch.randn(2, 80, frames, generator=g), mask, torch.randn(2, 80, frames, generator=g),
                torch.rand(2, generator=g), torch.randn(2, 80, generator=g),
                torch.randn(2, 80, frames, generator=g))

    names = ["x", "mask", "mu", "t", "spks", "cond"]
    axes = {n: {0: "batch", 2: "time"} for n in ("x", "mask", "mu", "cond", "estimator_out")}
    axes.update(t={0: "batch"}, spks={0: "batch"})
    path = tmp_path / "estimator.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(estimator, inputs(17), str(path), input_names=names,
                          output_names=["estimator_out"], dynamic_axes=axes, opset_version=18,
                          dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for frames in (9, 40):
        args = inputs(frames)
        out = session.run(None, {n: a.numpy() for n, a in zip(names, args)})[0]
        with torch.no_grad():
            expected = estimator(*args).numpy()
        assert out.shape == (2, 80, frames)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
