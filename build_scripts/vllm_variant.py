"""The `llm_vllm` model: Step1 served by Triton's vLLM backend (`--llm-engine vllm`).

Fills model_repository/llm_vllm/config.pbtxt.template and 1/model.json.template for a
Step-Audio-EditX weights directory. The engine settings that keep the model faithful are fixed
in the template (bfloat16, untied embeddings, the sqrt-ALiBi-capable attention backend); the
sizes are options. A directory whose config.json asks for tied embeddings is refused, as our
own Step1 loader refuses it.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

from build_scripts import build_repository as br
from python_backends.llm.step1_config import Step1Config, TiedEmbeddingsError
from python_backends.llm.vllm_requests import VLLM_MODEL
from python_backends.settings import LLM, TEXT_TOKENIZER_CONFIG_FILE, EditxSettings

MODEL_JSON = "model.json"
# model.json keys the faithful serving depends on, with their values
FAITHFUL_ENGINE_ARGS = {
    "dtype": "bfloat16",
    "hf_overrides": {"tie_word_embeddings": False},
    "attention_config": {"backend": "TRITON_ATTN"},  # the vLLM backend that has sqrt-ALiBi
    "generation_config": "vllm",  # every sampling value comes from the request
}
REQUIRED_ENGINE_ARGS = ("model", "tokenizer", "max_model_len", "max_num_seqs",
                        "gpu_memory_utilization", *FAITHFUL_ENGINE_ARGS)
DEFAULT_GPU_MEMORY_UTILIZATION = 0.30  # 7 GB of weights + KV cache (32 KiB a token) on an 80 GB GPU


def check_engine_args(text: str) -> dict:
    """Parse a filled model.json and check it carries the faithful settings."""
    try:
        args = json.loads(text)
    except json.JSONDecodeError as exc:
        raise br.BuildError(f"filled {VLLM_MODEL}/1/{MODEL_JSON} is not JSON: {exc}") from exc
    missing = [key for key in REQUIRED_ENGINE_ARGS if key not in args]
    wrong = [key for key, value in FAITHFUL_ENGINE_ARGS.items()
             if key in args and args[key] != value]
    if missing or wrong:
        raise br.BuildError(f"filled {VLLM_MODEL}/1/{MODEL_JSON}: missing {missing}, "
                            f"not the faithful value {wrong}")
    return args


def check_editx_for_vllm(editx_dir: Path) -> Step1Config:
    """The weights directory as vLLM reads it: an untied Step1 config and the tokenizer config
    its AutoTokenizer needs (the model type `step1` is unknown to transformers)."""
    try:
        config = Step1Config.from_dir(editx_dir)
    except TiedEmbeddingsError as exc:
        raise br.BuildError(str(exc)) from exc
    except (OSError, ValueError) as exc:
        raise br.BuildError(f"EditX config unusable for vLLM: {exc}") from exc
    if not (editx_dir / TEXT_TOKENIZER_CONFIG_FILE).is_file():
        raise br.BuildError(f"{editx_dir / TEXT_TOKENIZER_CONFIG_FILE} is missing: vLLM loads "
                            "the text tokenizer (LlamaTokenizer) by it")
    return config


def vllm_model_files(editx_dir: str | Path, gpus: tuple[int, ...] = (0,), instances: int = 1,
                     gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
                     max_model_len: int = LLM.max_length,
                     max_num_seqs: int = EditxSettings.max_active_sequences) -> dict[str, str]:
    """{path relative to the repository: text} of the `llm_vllm` model, validated: the config
    parses as Triton's ModelConfig, model.json as JSON with the faithful engine arguments."""
    editx_dir = Path(editx_dir).expanduser().resolve()
    if not gpus or instances < 1 or max_num_seqs < 1:
        raise br.BuildError("the vLLM model needs at least one GPU, one instance and "
                            "max_num_seqs >= 1")
    if not 0 < gpu_memory_utilization <= 1:
        raise br.BuildError(f"gpu_memory_utilization must be in (0, 1], not {gpu_memory_utilization}")
    config = check_editx_for_vllm(editx_dir)
    if not 2 <= max_model_len <= config.max_seq_len:
        raise br.BuildError(f"max_model_len must be in [2, {config.max_seq_len}] (the model's "
                            f"max_seq_len), not {max_model_len}")
    pbtxt = br.fill_template(VLLM_MODEL, {"llm_vllm_instances": str(instances),
                                          "llm_vllm_gpus": ", ".join(map(str, gpus))})
    template = br.TEMPLATES / VLLM_MODEL / "1" / f"{MODEL_JSON}.template"
    engine = string.Template(template.read_text(encoding="utf-8")).substitute(
        editx_dir=json.dumps(str(editx_dir)), max_model_len=json.dumps(max_model_len),
        max_num_seqs=json.dumps(max_num_seqs),
        gpu_memory_utilization=json.dumps(float(gpu_memory_utilization)))
    check_engine_args(engine)
    return {f"{VLLM_MODEL}/config.pbtxt": pbtxt, f"{VLLM_MODEL}/1/{MODEL_JSON}": engine}
