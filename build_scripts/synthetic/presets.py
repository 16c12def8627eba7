"""Sizes of the synthetic weights. `full` has the real release's dimensions."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ParaformerPreset:
    output_size: int
    attention_heads: int
    linear_units: int
    num_blocks: int
    decoder_blocks: int
    decoder_linear_units: int
    vocab_size: int


@dataclasses.dataclass(frozen=True)
class SpeechTokenizerPreset:
    n_state: int
    n_head: int
    n_layer: int
    n_mlp: int
    n_codes: int = 4096
    n_mels: int = 128
    n_ctx: int = 1500  # rows of the positional table: at most 1500 tokens (60 s) per call


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    paraformer: ParaformerPreset
    speech_tokenizer: SpeechTokenizerPreset
    vq02_codes: int = 1024
    fit_clip_seconds: float = 12.0  # espeak clips the codebooks are fitted to
    fit_clips: int = 10
    fit_seed_base: int = 100  # tests use speech_of_duration seeds 0..9: keep fitting speech apart
    kmeans_iterations: int = 8


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        paraformer=ParaformerPreset(output_size=64, attention_heads=2, linear_units=128,
                                    num_blocks=3, decoder_blocks=1, decoder_linear_units=128,
                                    vocab_size=64),
        speech_tokenizer=SpeechTokenizerPreset(n_state=64, n_head=2, n_layer=2, n_mlp=256),
    ),
    "full": Preset(
        name="full",
        paraformer=ParaformerPreset(output_size=512, attention_heads=4, linear_units=2048,
                                    num_blocks=50, decoder_blocks=16, decoder_linear_units=2048,
                                    vocab_size=8501),
        speech_tokenizer=SpeechTokenizerPreset(n_state=1280, n_head=20, n_layer=6, n_mlp=5120),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
