"""The FunASR ParaformerStreaming model directory of a Step-Audio-Tokenizer release.

Same architecture and config keys as
dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online
(SANMEncoderChunkOpt + ParaformerSANMDecoder + CifPredictorV2 + WavFrontendOnline),
random weights. FunASR builds the model on the meta device only to name and shape the
tensors; their values come from `random_init`.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from .files import atomic_open, write_bytes_atomic
from .presets import ParaformerPreset
from .random_init import init_parameter

N_MELS, LFR_M, LFR_N = 80, 7, 6
INPUT_SIZE = N_MELS * LFR_M


def build_config(p: ParaformerPreset) -> dict:
    return {
        "model": "ParaformerStreaming",
        "model_conf": {"ctc_weight": 0.0, "lsm_weight": 0.1, "length_normalized_loss": True,
                       "predictor_weight": 1.0, "predictor_bias": 1, "sampling_ratio": 0.75},
        "encoder": "SANMEncoderChunkOpt",
        "encoder_conf": {
            "output_size": p.output_size, "attention_heads": p.attention_heads,
            "linear_units": p.linear_units, "num_blocks": p.num_blocks,
            "dropout_rate": 0.1, "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.1,
            "input_layer": "pe_online", "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True, "kernel_size": 11, "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
            "chunk_size": [12, 15], "stride": [8, 10], "pad_left": [0, 0],
            "encoder_att_look_back_factor": [4, 4], "decoder_att_look_back_factor": [1, 1],
        },
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {
            "attention_heads": p.attention_heads, "linear_units": p.decoder_linear_units,
            "num_blocks": p.decoder_blocks, "dropout_rate": 0.1, "positional_dropout_rate": 0.1,
            "self_attention_dropout_rate": 0.1, "src_attention_dropout_rate": 0.1,
            "att_layer_num": p.decoder_blocks, "kernel_size": 11, "sanm_shfit": 5,
        },
        "predictor": "CifPredictorV2",
        "predictor_conf": {"idim": p.output_size, "threshold": 1.0, "l_order": 1, "r_order": 1,
                           "tail_threshold": 0.45},
        "frontend": "WavFrontendOnline",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": N_MELS, "frame_length": 25,
                          "frame_shift": 10, "lfr_m": LFR_M, "lfr_n": LFR_N, "dither": 0.0},
        "specaug": None,
        "normalize": None,
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True,
                     "ignore_nan_grad": True},
    }


def token_list(vocab_size: int) -> list[str]:
    if vocab_size < 4:
        raise ValueError("vocab_size must be >= 4")
    return ["<blank>", "<s>", "</s>"] + [f"tok{i}" for i in range(vocab_size - 4)] + ["<unk>"]


def _funasr_model_class(name: str):
    # funasr prints notices on import (ffmpeg, ...); keep our log clean
    with contextlib.redirect_stdout(io.StringIO()):
        import funasr.models.paraformer_streaming.model  # noqa: F401  (registers the classes)
        from funasr.register import tables
    cls = tables.model_classes.get(name)
    if cls is None:
        raise RuntimeError(f"funasr has no registered model class {name!r}")
    return cls


def random_state_dict(config: dict, vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """All tensors of FunASR's model for `config`, in FunASR's key order, randomly initialised."""
    cls = _funasr_model_class(config["model"])
    kwargs = dict(config)
    kwargs.update(config["model_conf"])
    with torch.device("meta"):
        model = cls(**kwargs, input_size=INPUT_SIZE, vocab_size=vocab_size)
    norm_params = {f"{mod_name}.{p}" if mod_name else p
                   for mod_name, mod in model.named_modules()
                   if isinstance(mod, torch.nn.LayerNorm)
                   for p, _ in mod.named_parameters(recurse=False)}
    state = {}
    for name, meta in model.state_dict().items():
        if meta.dtype != torch.float32:
            raise RuntimeError(f"unexpected non-float tensor {name} {meta.dtype} in {config['model']}")
        state[name] = init_parameter(seed, f"paraformer/{name}", meta.shape, name in norm_params)
    return state


def am_mvn_text(mean80: np.ndarray, std80: np.ndarray) -> str:
    """Kaldi nnet1 text CMVN for LFR features: AddShift = -mean, Rescale = 1/std, tiled ×7."""
    shift = np.tile(-mean80.astype(np.float32), LFR_M)
    scale = np.tile((1.0 / std80).astype(np.float32), LFR_M)
    fmt = lambda a: " ".join(f"{x:.6f}" for x in a)  # noqa: E731
    n = INPUT_SIZE
    return (f"<Nnet>\n<Splice> {n} {n}\n[ 0 ]\n"
            f"<AddShift> {n} {n}\n<LearnRateCoef> 0 [ {fmt(shift)} ]\n"
            f"<Rescale> {n} {n}\n<LearnRateCoef> 0 [ {fmt(scale)} ]\n</Nnet>\n")


CONFIGURATION_JSON = {
    "framework": "pytorch",
    "task": "auto-speech-recognition",
    "model": {"type": "funasr"},
    "pipeline": {"type": "funasr-pipeline"},
    "file_path_metas": {
        "init_param": "model.pt",
        "config": "config.yaml",
        "tokenizer_conf": {"token_list": "tokens.json"},
        "frontend_conf": {"cmvn_file": "am.mvn"},
    },
}


def write_paraformer_dir(out: Path, p: ParaformerPreset, seed: int, mean80: np.ndarray,
                         std80: np.ndarray) -> dict[str, torch.Tensor]:
    """Writes config.yaml, model.pt, am.mvn, tokens.json and configuration.json (each
    atomically); returns the state dict."""
    config = build_config(p)
    tokens = token_list(p.vocab_size)
    state = random_state_dict(config, len(tokens), seed)
    with atomic_open(out / "model.pt") as f:
        torch.save(state, f)
    write_file = write_bytes_atomic
    write_file(out / "config.yaml",
               yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode("utf-8"))
    write_file(out / "am.mvn", am_mvn_text(mean80, std80).encode("utf-8"))
    write_file(out / "tokens.json", json.dumps(tokens, ensure_ascii=False).encode("utf-8"))
    write_file(out / "configuration.json",
               (json.dumps(CONFIGURATION_JSON, indent=2) + "\n").encode("utf-8"))
    return state
