"""The vLLM variant of the LLM (`llm_vllm`): its filled Triton config and engine arguments, the
refusal of tied embeddings, and the request / answer helpers. vLLM itself does not install on
this machine; serving it is checked on a GPU with the NGC vLLM image."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from build_scripts import build_repository as br
from build_scripts import vllm_variant as vv
from build_scripts.synthetic.step1_checkpoint import PRESETS, config_json
from build_scripts.synthetic.text_tokenizer import write_text_tokenizer
from python_backends.errors import InvalidInput
from python_backends.llm import prompt_builder as pb
from python_backends.llm import vllm_requests as vr
from python_backends.llm.sampling import SamplingParams, final_output
from python_backends.llm.text_tokenizer import TextTokenizer

AUDIO = "<audio_17><audio_1023><audio_1024><audio_5119><audio_0>"


@pytest.fixture(scope="module")
def editx(tmp_path_factory) -> Path:
    """What vLLM reads of an EditX directory: config.json and the text tokenizer files."""
    out = tmp_path_factory.mktemp("editx")
    (out / "config.json").write_text(json.dumps(config_json(PRESETS["tiny"])))
    write_text_tokenizer(out, seed=0)
    return out


@pytest.fixture(scope="module")
def tok(editx) -> TextTokenizer:
    return TextTokenizer(editx / "tokenizer.model")


def parsed(text: str) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(text, config)
    return config


def with_config(editx: Path, tmp_path: Path, **changes) -> Path:
    out = tmp_path / "editx"
    out.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json"):
        (out / name).write_bytes((editx / name).read_bytes())
    raw = config_json(PRESETS["tiny"])
    raw.update(changes)
    (out / "config.json").write_text(json.dumps({k: v for k, v in raw.items() if v is not None}))
    return out


# --------------------------------------------------------------------------- repository files

def test_filled_config_is_a_decoupled_vllm_model(editx):
    files = vv.vllm_model_files(editx, gpus=(1, 2), instances=1)
    assert sorted(files) == ["llm_vllm/1/model.json", "llm_vllm/config.pbtxt"]
    text = files["llm_vllm/config.pbtxt"]
    assert text.startswith(br.GENERATED_HEADER)
    config = parsed(text)
    assert (config.name, config.backend, config.max_batch_size) == ("llm_vllm", "vllm", 0)
    assert config.model_transaction_policy.decoupled
    assert {i.name: i.data_type for i in config.input} == {
        "text_input": model_config_pb2.TYPE_STRING, "stream": model_config_pb2.TYPE_BOOL,
        "sampling_parameters": model_config_pb2.TYPE_STRING,
        "exclude_input_in_output": model_config_pb2.TYPE_BOOL,
        "return_logprobs": model_config_pb2.TYPE_BOOL}
    assert [o.name for o in config.output] == ["text_output", "logprobs"]
    group = config.instance_group[0]
    assert (group.count, group.kind, list(group.gpus)) == (
        1, model_config_pb2.ModelInstanceGroup.KIND_GPU, [1, 2])
    assert config.parameters["REPORT_CUSTOM_METRICS"].string_value == "true"


def test_model_json_has_the_faithful_engine_arguments(editx):
    files = vv.vllm_model_files(editx, gpu_memory_utilization=0.4, max_num_seqs=32)
    args = json.loads(files["llm_vllm/1/model.json"])
    assert args["model"] == args["tokenizer"] == str(editx.resolve())
    assert args["dtype"] == "bfloat16"
    assert args["hf_overrides"] == {"tie_word_embeddings": False}
    assert args["attention_config"] == {"backend": "TRITON_ATTN"}
    assert args["generation_config"] == "vllm"
    assert args["trust_remote_code"] is False
    assert (args["max_model_len"], args["max_num_seqs"], args["gpu_memory_utilization"]) == (
        8192, 32, 0.4)


def test_engine_args_check_refuses_unfaithful_settings():
    good = {**vv.FAITHFUL_ENGINE_ARGS, "model": "/m", "tokenizer": "/m", "max_model_len": 8192,
            "max_num_seqs": 16, "gpu_memory_utilization": 0.3}
    assert vv.check_engine_args(json.dumps(good)) == good
    tied = {**good, "hf_overrides": {}}
    with pytest.raises(br.BuildError, match=r"not the faithful value \['hf_overrides'\]"):
        vv.check_engine_args(json.dumps(tied))
    with pytest.raises(br.BuildError, match=r"missing \['dtype'\]"):
        vv.check_engine_args(json.dumps({k: v for k, v in good.items() if k != "dtype"}))
    with pytest.raises(br.BuildError, match="is not JSON"):
        vv.check_engine_args("{")


def test_tied_embeddings_config_is_refused(editx, tmp_path):
    tied = with_config(editx, tmp_path, tie_word_embeddings=True)
    with pytest.raises(br.BuildError) as err:
        vv.vllm_model_files(tied)
    assert str(err.value) == (
        f"{tied.resolve() / 'config.json'}: 'tie_word_embeddings' is true, but Step1 "
        "(Step-Audio-EditX) must run with an untied lm_head; set \"tie_word_embeddings\": false "
        "and ship lm_head.weight")


def test_missing_flag_is_served_untied_by_the_override(editx, tmp_path):
    """The release's first config.json had no flag; vLLM's Step1Config would then tie."""
    bare = with_config(editx, tmp_path, tie_word_embeddings=None)
    args = json.loads(vv.vllm_model_files(bare)["llm_vllm/1/model.json"])
    assert args["hf_overrides"] == {"tie_word_embeddings": False}


def test_bad_options_and_directories_are_refused(editx, tmp_path):
    with pytest.raises(br.BuildError, match=r"gpu_memory_utilization must be in \(0, 1\]"):
        vv.vllm_model_files(editx, gpu_memory_utilization=1.5)
    with pytest.raises(br.BuildError, match=r"max_model_len must be in \[2, 32768\]"):
        vv.vllm_model_files(editx, max_model_len=40000)
    with pytest.raises(br.BuildError, match="at least one GPU"):
        vv.vllm_model_files(editx, gpus=())
    with pytest.raises(br.BuildError, match="EditX config unusable for vLLM"):
        vv.vllm_model_files(tmp_path)
    no_tok_config = with_config(editx, tmp_path)
    (no_tok_config / "tokenizer_config.json").unlink()
    with pytest.raises(br.BuildError, match="tokenizer_config.json is missing"):
        vv.vllm_model_files(no_tok_config)


# --------------------------------------------------------------------------- requests

def test_sampling_parameters_are_the_originals():
    sampling = vr.vllm_sampling_parameters(SamplingParams(), prompt_len=300)
    assert sampling == {
        "temperature": 0.7, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0,
        "max_tokens": 8192 - 300, "stop_token_ids": [3], "ignore_eos": True, "logprobs": 0,
        "skip_special_tokens": False, "spaces_between_special_tokens": False}
    assert json.loads(json.dumps(sampling)) == sampling


def test_sampling_parameters_follow_the_request():
    params = SamplingParams(temperature=1.1, top_k=0, seed=7, max_length=500)
    sampling = vr.vllm_sampling_parameters(params, prompt_len=100)
    assert (sampling["temperature"], sampling["top_k"], sampling["seed"], sampling["max_tokens"]) == (
        1.1, -1, 7, 400)
    greedy = vr.vllm_sampling_parameters(SamplingParams(greedy=True), prompt_len=10)
    assert greedy["temperature"] == 0.0 and "seed" not in greedy
    with pytest.raises(InvalidInput, match=r"has 500 ids; allowed: fewer than max_length \(500\)"):
        vr.vllm_sampling_parameters(params, prompt_len=500)


@pytest.mark.parametrize("inner_bos", [True, False])
def test_prompt_text_tokenizes_back_into_the_prompt_ids(tok, inner_bos):
    ids = pb.clone_prompt_ids(tok, "clone_0123456789abcdef", "我们今天 go to the park 🌳",
                              AUDIO, "Hello  world,\n 你好 <|EOT", inner_bos)
    text = vr.vllm_prompt_text(tok, ids)
    assert text.startswith("<|BOT|><s> system\n" if inner_bos else "<|BOT|> system\n")
    assert AUDIO in text and text.endswith("assistant\n")
    assert tok.encode(text, add_bos=True) == ids
    edit = pb.edit_prompt_ids(tok, "emotion", "happy", "今天 weather", AUDIO, inner_bos)
    assert tok.encode(vr.vllm_prompt_text(tok, edit), add_bos=True) == edit


def test_typed_special_pieces_have_no_text_form(tok):
    """A typed "<|EOT|>" is text in our prompt; vLLM would tokenize it back as the control token."""
    ids = pb.clone_prompt_ids(tok, "clone_0123456789abcdef", "hi", AUDIO, "你好 <|EOT|>", True)
    with pytest.raises(InvalidInput, match="has no text form that tokenizes back"):
        vr.vllm_prompt_text(tok, ids)


def test_prompt_text_refuses_ids_without_a_text_form(tok):
    with pytest.raises(InvalidInput, match="does not start with <s>"):
        vr.vllm_prompt_text(tok, [4, 65536])
    # "audio" spelled letter by letter: its text encodes to merged pieces instead
    letters = [tok.sp.piece_to_id(c) for c in "audio"]
    ids = [1, 4, *letters, 3]
    assert len(tok.encode(tok.decode(ids[1:]), add_bos=True)) < len(ids)
    with pytest.raises(InvalidInput, match="has no text form that tokenizes back"):
        vr.vllm_prompt_text(tok, ids)


def test_request_inputs():
    sampling = vr.vllm_sampling_parameters(SamplingParams(seed=3), prompt_len=5)
    inputs = vr.vllm_request_inputs("<|BOT|> hi", sampling, stream=True)
    assert inputs["text_input"].tolist() == [b"<|BOT|> hi"]
    assert json.loads(inputs["sampling_parameters"][0]) == sampling
    assert inputs["stream"].tolist() == [True] and inputs["stream"].dtype == np.bool_
    assert inputs["exclude_input_in_output"].tolist() == [True]
    assert inputs["return_logprobs"].tolist() == [True]


def test_output_ids_from_logprobs():
    logprobs = json.dumps([{"65553": {"logprob": -0.1, "rank": 1, "decoded_token": "<audio_17>"}},
                           {"70655": {"logprob": -2.0, "rank": 7, "decoded_token": None}},
                           {"3": {"logprob": -0.5, "rank": 1, "decoded_token": "<|EOT|>"}}])
    ids = vr.vllm_output_ids(logprobs.encode())
    assert ids == [65553, 70655, 3]
    assert final_output(ids, SamplingParams()) == [65553, 70655]
    with pytest.raises(ValueError, match="position 0 holds 2 ids"):
        vr.vllm_output_ids(json.dumps([{"5": {}, "6": {}}]))
    with pytest.raises(ValueError, match="returned no logprobs"):
        vr.vllm_output_ids(b"null")
