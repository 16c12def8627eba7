"""Units of the clone stages that need no server: the prompt cache, GPU placement, the
repository builder's EditX part, the prompt audio checks and token2wav's batching."""
from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from build_scripts import placement as pl
from build_scripts.build_repository import BuildError, RepositoryOptions, build
from build_scripts.build_repository import main as build_main
from python_backends.errors import InvalidInput
from python_backends.decoder.prompt_audio import prompt_audio
from python_backends.serving.prompt_cache import PromptCache, PromptFeatures, prompt_key
from python_backends.settings import EditxSettings


def features(tag: int) -> PromptFeatures:
    return PromptFeatures(np.array([tag], np.int32), f"<audio_{tag}>",
                          np.zeros((2, 80), np.float32), np.zeros(192, np.float32))


# ------------------------------------------------------------------ prompt cache

def test_prompt_key_covers_samples_rate_and_channels():
    audio = np.arange(8, dtype=np.float32)
    keys = {prompt_key(audio, 16000, 1), prompt_key(audio, 22050, 1), prompt_key(audio, 16000, 2),
            prompt_key(audio + 1, 16000, 1)}
    assert len(keys) == 4 and prompt_key(audio.copy(), 16000, 1) in keys


def test_cache_counts_hits_and_misses_and_evicts_the_least_recent():
    cache = PromptCache(entries=2)
    calls = []

    def make(tag):
        return lambda: calls.append(tag) or features(tag)

    assert cache.get_or_compute("a", make(1))[1] is False
    assert cache.get_or_compute("b", make(2))[1] is False
    got, hit = cache.get_or_compute("a", make(9))
    assert hit and got.merged_ids.tolist() == [1]
    cache.get_or_compute("c", make(3))  # evicts b (a was used more recently)
    assert cache.get_or_compute("a", make(9))[1] is True
    assert cache.get_or_compute("b", make(4))[1] is False
    assert calls == [1, 2, 3, 4] and (cache.hits, cache.misses) == (2, 4)


def test_cache_of_zero_entries_computes_every_time():
    cache = PromptCache(entries=0)
    for _ in range(2):
        assert cache.get_or_compute("a", lambda: features(1))[1] is False
    assert (cache.hits, cache.misses) == (0, 2)


def test_a_failed_compute_is_not_cached():
    cache = PromptCache(entries=4)
    with pytest.raises(RuntimeError, match="tokenizer down"):
        cache.get_or_compute("a", lambda: (_ for _ in ()).throw(RuntimeError("tokenizer down")))
    assert cache.get_or_compute("a", lambda: features(5))[1] is False


def test_concurrent_requests_for_a_new_voice_encode_it_once():
    cache = PromptCache(entries=4)
    started, release, calls = threading.Event(), threading.Event(), []

    def slow():
        calls.append(1)
        started.set()
        release.wait(5)
        return features(7)

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_compute("v", slow)))
               for _ in range(4)]
    threads[0].start()
    started.wait(5)
    for t in threads[1:]:
        t.start()
    release.set()
    for t in threads:
        t.join(5)
    assert len(calls) == 1 and sorted(hit for _, hit in results) == [False, True, True, True]


# ------------------------------------------------------------------ placement

def test_placement_parses_groups_and_refuses_unknown_ones():
    assert pl.parse_placement("vq02=0,vq06=1,llm=0,decoder=1") == {
        "vq02": 0, "vq06": 1, "llm": 0, "decoder": 1}
    assert pl.parse_placement("") == {}
    with pytest.raises(pl.PlacementError, match="'gpu7=1' is not GROUP=GPU"):
        pl.parse_placement("gpu7=1")
    with pytest.raises(pl.PlacementError, match="names 'llm' twice"):
        pl.parse_placement("llm=0,llm=1")


@pytest.mark.parametrize("count, expected", [
    (1, {"vq02": 0, "vq06": 0, "llm": 0, "decoder": 0, "prompt": 0}),
    (2, {"vq02": 0, "vq06": 1, "llm": 0, "decoder": 1, "prompt": 1}),
    (4, {"vq02": 0, "vq06": 1, "llm": 0, "decoder": 2, "prompt": 2}),
])
def test_auto_placement_by_gpu_count(count, expected):
    assert pl.parse_placement("auto", gpu_count=count) == expected


def test_auto_placement_without_gpus_is_refused():
    with pytest.raises(pl.PlacementError, match="found no GPU"):
        pl.parse_placement("auto", gpu_count=0)


def test_models_of_unplaced_groups_run_on_all_given_gpus():
    gpus = pl.model_gpus({"llm": 1}, (0, 1))
    assert gpus["llm_stream"] == (1,) and gpus["token2wav"] == (0, 1)
    assert gpus["vq02_encoder"] == gpus["vq02"] == (0, 1)


# ------------------------------------------------------------------ repository builder

def config_of(repo: Path, model: str):
    return text_format.Parse((repo / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_gpu_placement_writes_instance_groups(tmp_path, tiny_weights, tiny_editx):
    repo = build(tiny_weights, tmp_path / "repo", RepositoryOptions(
        device="gpu", gpus=(0, 1), placement=(("vq02", 0), ("vq06", 1), ("llm", 1), ("decoder", 0))),
        editx=tiny_editx)
    for model, gpus in (("vq02", [0]), ("vq06", [1]), ("llm_stream", [1]), ("token2wav", [0]),
                        ("clone_stream", [0]), ("speaker_embedding", [0, 1]),
                        ("prompt_features", [0, 1])):
        group = config_of(repo, model).instance_group[0]
        assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and list(group.gpus) == gpus
    for model in ("preprocess", "prompt_builder", "clone", "llm"):
        assert config_of(repo, model).instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_editx_models_carry_their_settings_and_are_removed_without_editx(tmp_path, tiny_weights,
                                                                          tiny_editx):
    repo = build(tiny_weights, tmp_path / "repo", RepositoryOptions(max_text_chars=77),
                 editx=tiny_editx)
    settings = EditxSettings.from_json(config_of(repo, "clone").parameters["editx_settings"].string_value)
    assert settings.editx_dir == str(tiny_editx.resolve()) and settings.max_target_text_chars == 77
    assert config_of(repo, "clone_stream").model_transaction_policy.decoupled
    assert config_of(repo, "llm_stream").model_transaction_policy.decoupled
    assert not config_of(repo, "llm").model_transaction_policy.decoupled
    build(tiny_weights, repo)
    assert not (repo / "clone").exists() and (repo / "audio_tokenizer").exists()


def test_precision_is_per_stage_and_defaults_to_the_originals_mix(tmp_path, tiny_weights,
                                                                  tiny_editx):
    """The original loads Step1 in bfloat16 and runs CosyVoice's flow and HiFT in float32."""
    repo = build(tiny_weights, tmp_path / "default", editx=tiny_editx)
    for model in ("llm_stream", "token2wav"):
        settings = EditxSettings.from_json(config_of(repo, model).parameters["editx_settings"].string_value)
        assert (settings.llm_dtype, settings.flow_dtype, settings.hift_dtype) == (
            "bfloat16", "float32", "float32")
    from python_backends.decoder.token2wav import Token2Wav

    mixed = Token2Wav.from_settings(EditxSettings(str(tiny_editx), flow_dtype="bfloat16"))
    assert next(mixed.flow.model.parameters()).dtype == torch.bfloat16
    assert next(mixed.hift.parameters()).dtype == torch.float32
    with pytest.raises(BuildError, match="--hift-dtype must be one of float32, bfloat16, not 'float16'"):
        build(tiny_weights, tmp_path / "bad", RepositoryOptions(hift_dtype="float16"), editx=tiny_editx)


def test_llm_runtime_options_reach_llm_stream_and_bad_ones_are_refused(tmp_path, tiny_weights,
                                                                          tiny_editx):
    def runtime(repo):
        settings = EditxSettings.from_json(
            config_of(repo, "llm_stream").parameters["editx_settings"].string_value)
        return (settings.llm_pack_weights, settings.llm_pad_rows, settings.llm_num_threads,
                settings.llm_prefill_budget, settings.llm_cuda_graphs)

    assert runtime(build(tiny_weights, tmp_path / "default", editx=tiny_editx)) == (
        True, 4, 0, 512, False)
    assert build_main(["--weights", str(tiny_weights), "--out", str(tmp_path / "set"),
                       "--editx", str(tiny_editx), "--no-llm-pack", "--llm-pad-rows", "0",
                       "--llm-threads", "3", "--llm-prefill-budget", "64", "--llm-cuda-graphs"]) == 0
    assert runtime(tmp_path / "set") == (False, 0, 3, 64, True)
    for field, value, message in (
            ("llm_prefill_budget", 0, "--llm-prefill-budget must be >= 1 (not 0)"),
            ("llm_num_threads", -1, "--llm-threads >= 0 (0: every CPU; not -1)"),
            ("llm_pad_rows", -2, "--llm-pad-rows >= 0 (0: no padding; not -2)")):
        with pytest.raises(BuildError, match=re.escape(message)):
            build(tiny_weights, tmp_path / "bad", RepositoryOptions(**{field: value}), editx=tiny_editx)


def test_incomplete_editx_directory_is_named(tmp_path, tiny_weights):
    editx = tmp_path / "editx"
    editx.mkdir()
    (editx / "config.json").write_text("{}")
    with pytest.raises(BuildError, match=r"missing: .*tokenizer.model \(the SentencePiece text "
                                         r"tokenizer\).*flow.pt \(the flow weights\)"):
        build(tiny_weights, tmp_path / "repo", editx=editx)


def test_placement_needs_a_gpu_repository(tmp_path, tiny_weights):
    with pytest.raises(BuildError, match="--placement needs --device gpu"):
        build(tiny_weights, tmp_path / "repo", RepositoryOptions(placement=(("llm", 0),)))


# ------------------------------------------------------------------ prompt audio

def test_prompt_audio_mixes_down_and_caps_the_peak():
    settings = EditxSettings("x")
    left = 0.9 * np.sin(np.arange(16000) / 7).astype(np.float32)
    stereo = np.stack([left, 0.5 * left], axis=1).reshape(-1)
    out = prompt_audio(stereo, 16000, 2, settings)
    np.testing.assert_allclose(out, 0.75 * left * (0.6 / np.abs(0.75 * left).max()), rtol=1e-6)
    quiet = 0.3 * left
    np.testing.assert_array_equal(prompt_audio(quiet, 16000, 1, settings), quiet)


@pytest.mark.parametrize("audio, rate, message", [
    (np.zeros(16000, np.float32), 16000, "input 'waveform': is silent (peak 0.00e+00); allowed: "
                                         "speech with a peak of at least 0.001"),
    (np.full(1600, 0.1, np.float32), 16000, "input 'waveform': lasts 0.1 s (1600 samples per channel "
                                            "at 16000 Hz); allowed: a voice prompt of at least 0.5 s "
                                            "(8000 samples per channel at 16000 Hz)"),
    (np.full(16000, 0.1, np.float32), 4000, "input 'sample_rate': got 4000 Hz"),
])
def test_prompt_audio_refusals(audio, rate, message):
    with pytest.raises(InvalidInput) as caught:
        prompt_audio(audio, rate, 1, EditxSettings("x"))
    assert str(caught.value).startswith(message)


# ------------------------------------------------------------------ token2wav

def audio_ids(groups: int, rng) -> np.ndarray:
    out = []
    for _ in range(groups):
        out += list(65536 + rng.integers(0, 1024, 2)) + list(65536 + 1024 + rng.integers(0, 4096, 3))
    return np.array(out)


def test_token2wav_batch_equals_each_alone_with_960_samples_per_row(tiny_editx):
    import torch

    from python_backends.decoder.token2wav import Token2Wav

    torch.set_num_threads(1)
    decoder = Token2Wav.from_settings(EditxSettings(str(tiny_editx)))
    rng = np.random.default_rng(3)
    items = [dict(target_ids=audio_ids(7, rng), prompt_ids=audio_ids(4, rng),
                  prompt_mel=rng.standard_normal((27, 80)).astype(np.float32),
                  speaker_embedding=rng.standard_normal(192).astype(np.float32), seed=3),
             dict(target_ids=audio_ids(3, rng)[:-2], prompt_ids=audio_ids(6, rng),
                  prompt_mel=rng.standard_normal((40, 80)).astype(np.float32),
                  speaker_embedding=rng.standard_normal(192).astype(np.float32), seed=4)]
    batched = decoder.batch(items)
    assert [len(w) for w in batched] == [7 * 3 * 960, 3 * 3 * 960]  # 13 ids padded to 15
    # the padded flow differs from the lone one in the last bits (1e-6); voiced HiFT integrates
    # f0 into the sine phase, which grows that to ~3e-4 here: a mix-up would be > 1e-2
    for item, wave in zip(items, batched):
        np.testing.assert_allclose(decoder.batch([item])[0], wave, atol=1e-3)
        assert wave.dtype == np.float32 and 0.01 < np.abs(wave).max() <= 0.99
    reseeded = decoder.batch([{**items[0], "seed": 5}])[0]
    assert np.abs(reseeded - batched[0]).max() > 1e-2


def test_prompt_mel_is_resampled_to_two_frames_per_prompt_row(tiny_editx):
    from python_backends.decoder.token2wav import Token2Wav

    decoder = Token2Wav.from_settings(EditxSettings(str(tiny_editx)))
    mel = np.arange(5 * 80, dtype=np.float32).reshape(5, 80)
    out = decoder.prompt_mel_frames(mel, 4).numpy()  # 5 frames -> 8 (nearest)
    np.testing.assert_array_equal(out[:, 0], mel[[0, 0, 1, 1, 2, 3, 3, 4], 0])


def test_flow_engine_onnx_exports_the_estimator_into_the_settings(tmp_path, tiny_weights, tiny_editx):
    repo = build(tiny_weights, tmp_path / "repo", RepositoryOptions(
        flow_engine="onnx", flow_engine_file=str(tmp_path / "estimator.onnx")), editx=tiny_editx)
    settings = EditxSettings.from_json(config_of(repo, "token2wav").parameters["editx_settings"].string_value)
    assert settings.flow_engine == "onnx" and settings.flow_onnx == str(tmp_path / "estimator.onnx")
    assert (tmp_path / "estimator.onnx").is_file() and (tmp_path / "estimator.json").is_file()
    assert "engine_model" not in config_of(repo, "token2wav").parameters


@pytest.mark.parametrize("options, message", [
    (RepositoryOptions(flow_engine="tensorrt"), "--flow-engine tensorrt needs --device gpu"),
    (RepositoryOptions(instances=(("flow_estimator", 2),)), "needs --flow-engine tensorrt"),
    (RepositoryOptions(flow_engine="cuda"), "--flow-engine must be one of torch, onnx, tensorrt"),
])
def test_flow_engine_refusals(tmp_path, tiny_weights, tiny_editx, options, message):
    with pytest.raises(BuildError, match=message):
        build(tiny_weights, tmp_path / "repo", options, editx=tiny_editx)
