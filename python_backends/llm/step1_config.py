"""`config.json` of a Step1 checkpoint, read into a typed, validated dataclass.

The release's weights are untied (separate `embed_tokens` and `lm_head`). Tying them makes the
model hum or fall silent (step_audio_internals.md §2.3, Pitfall 1), so a config that asks for
tied embeddings is refused instead of silently served.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..settings import LLM_CONFIG_FILE

TIE_FLAG = "tie_word_embeddings"


class TiedEmbeddingsError(ValueError):
    """The checkpoint would run with `lm_head` tied to `embed_tokens`."""


@dataclasses.dataclass(frozen=True)
class Step1Config:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_attention_groups: int  # key/value heads of grouped-query attention
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    max_seq_len: int = 32768
    bos_token_id: int = 1
    eos_token_id: int = 3
    pad_token_id: int = 0
    tie_word_embeddings: bool = False

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_attention_groups:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple "
                             f"of num_attention_groups {self.num_attention_groups}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_attention_groups

    @classmethod
    def from_dict(cls, raw: dict, source: str = LLM_CONFIG_FILE) -> "Step1Config":
        """Known fields only; refuses `tie_word_embeddings: true`. A missing flag is accepted:
        the loader then still requires a separate `lm_head.weight` tensor."""
        if raw.get(TIE_FLAG, False):
            raise TiedEmbeddingsError(
                f"{source}: '{TIE_FLAG}' is true, but Step1 (Step-Audio-EditX) must run with an "
                f"untied lm_head; set \"{TIE_FLAG}\": false and ship lm_head.weight")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING}
        missing = sorted(required - raw.keys())
        if missing:
            raise ValueError(f"{source}: missing field(s) {missing}")
        return cls(**{k: v for k, v in raw.items() if k in names})

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "Step1Config":
        path = Path(model_dir) / LLM_CONFIG_FILE
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")), source=str(path))
