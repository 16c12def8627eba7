"""A synthetic Step-Audio-EditX text tokenizer: a real SentencePiece BPE model with the release's
special ids and vocabulary layout (step_audio_internals.md §2.3).

ids 0 `<unk>`, 1 `<s>`, 2 `</s>`, 3 `<|EOT|>`, 4 `<|BOT|>`, then byte-fallback and trained
pieces, UNUSED fillers up to 65535, then `<audio_N>` = 65536 + N (USER_DEFINED, so the string
"<audio_17>" encodes to 65553) up to the LLM's vocab size 74752. The pieces are trained on a
small seeded English + Chinese corpus that also holds the prompt templates' words; byte fallback
makes any unicode text encodable. The same seed gives the same bytes.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from build_scripts.synthetic.files import write_bytes_atomic
from python_backends.llm import spm_proto
from python_backends.llm.prompt_templates import (ASSISTANT_HEADER, AUDIO_EDIT_SYSTEM_PROMPT,
                                                  CLONE_SYSTEM_TEMPLATE, HUMAN_HEADER, SYSTEM_HEADER)
from python_backends.settings import LLM, TEXT_TOKENIZER_CONFIG_FILE, TEXT_TOKENIZER_FILE

VOCAB_SIZE = 74752  # the Step1 LLM's vocab_size
TEXT_VOCAB = LLM.audio_token_offset  # ids below this are text
SPECIAL_USER_SYMBOLS = ("<|EOT|>", "<|BOT|>")  # the trainer places them at ids 3 and 4
TRAINED_PIECES = 2000
CORPUS_LINES = 3000

ENGLISH = (
    "the a an of to and in is it that this with for on as be at by from or are was voice audio "
    "speech speaker prompt text tokens generate timbre prosody speaking style name start end "
    "make more remove any emotion reference noise given while preserving content clearly "
    "ensure quality remains intact minimal distortion eliminate silent portions silence add "
    "some non verbal sounds natural new corresponding happy sad angry surprised calm fast slow "
    "faster slower hello world today weather good morning evening please read sentence story "
    "news radio whisper gentle warm serious child older girl sweet we you they she he said "
    "time day year people water music city river mountain train window table question answer"
).split()
CHINESE = (
    "的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年得就那要下以生会自着去之过家"
    "学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经"
    "头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者"
    "向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气"
    "今天很我们一起去公园散步你好世界音克隆语合成文本说话风雨花草山水春夏秋冬早晚快慢笑哭唱读写"
)
PUNCTUATION_EN = (".", ",", "?", "!", ":", ";")
PUNCTUATION_ZH = ("。", "，", "？", "！", "：", "；")


def corpus(seed: int) -> list[str]:
    """Seeded sentences: English, Chinese, mixed, and the prompt templates' own lines."""
    rng = np.random.default_rng(seed)
    template_lines = [line for text in (CLONE_SYSTEM_TEMPLATE, AUDIO_EDIT_SYSTEM_PROMPT)
                      for line in text.splitlines() if line.strip()]
    roles = [header.strip() for header in (SYSTEM_HEADER, HUMAN_HEADER, ASSISTANT_HEADER)]
    lines = roles * 20 + template_lines * 20
    for i in range(CORPUS_LINES):
        n = int(rng.integers(3, 16))
        words = [str(w) for w in rng.choice(ENGLISH, n)]
        hanzi = "".join(rng.choice(list(CHINESE), n))
        kind = i % 3
        if kind == 0:
            lines.append(" ".join(words).capitalize() + str(rng.choice(PUNCTUATION_EN)))
        elif kind == 1:
            lines.append(hanzi + str(rng.choice(PUNCTUATION_ZH)))
        else:
            lines.append(f"{hanzi} {' '.join(words[:3])} {int(rng.integers(0, 10000))}")
    return lines


def train_pieces(seed: int) -> bytes:
    """The trained BPE model (serialized ModelProto): ids 0-4 special, byte pieces, merges."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(seed)), model_writer=out, model_type="bpe",
        vocab_size=TRAINED_PIECES, hard_vocab_limit=False, byte_fallback=True,
        character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
        user_defined_symbols=list(SPECIAL_USER_SYMBOLS), unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2)
    return out.getvalue()


def full_vocabulary(trained: bytes) -> bytes:
    """The trained model grown to VOCAB_SIZE: UNUSED fillers, then the USER_DEFINED audio pieces."""
    pieces, rest = spm_proto.parse(trained)
    pieces += [spm_proto.Piece(f"<unused_{i}>", 0.0, spm_proto.UNUSED)
               for i in range(len(pieces), TEXT_VOCAB)]
    pieces += [spm_proto.Piece(f"<audio_{n}>", 0.0, spm_proto.USER_DEFINED)
               for n in range(VOCAB_SIZE - TEXT_VOCAB)]
    return spm_proto.serialize(pieces, rest + spm_proto.trainer_vocab_size(len(pieces)))


def tokenizer_config() -> dict:
    """LlamaTokenizer, legacy false, no add_bos_token key (the release's file sets none)."""
    return {
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 32768,
        "pad_token": "<unk>",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
    }


def write_text_tokenizer(out_dir: Path, seed: int = 0) -> list[Path]:
    """Write `tokenizer.model` and `tokenizer_config.json` into `out_dir`; returns both paths."""
    out_dir = Path(out_dir)
    model_path = out_dir / TEXT_TOKENIZER_FILE
    config_path = out_dir / TEXT_TOKENIZER_CONFIG_FILE
    write_bytes_atomic(model_path, full_vocabulary(train_pieces(seed)))
    write_bytes_atomic(config_path, (json.dumps(tokenizer_config(), indent=2) + "\n").encode())
    return [model_path, config_path]
