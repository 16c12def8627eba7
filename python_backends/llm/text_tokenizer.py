"""The Step-Audio-EditX text tokenizer: `tokenizer.model` (SentencePiece) encoded the way EditX's
`AutoTokenizer` encodes it.

EditX loads the release's LlamaTokenizer files (tokenizer_config.json: legacy false, no
tokenizer.json) with transformers' AutoTokenizer, which converts them to LlamaTokenizerFast.
What we match of that tokenizer:
- no normalizer (the Llama converter drops the SentencePiece normalizer when legacy is false);
  so the model is loaded with an identity normalizer, without whitespace collapsing;
- the dummy prefix: "▁" is put before the text only at its very start and only when the text
  does not start with whitespace or with a special piece (Metaspace, prepend_scheme "first";
  SentencePiece's own add_dummy_prefix is switched off, as LlamaTokenizer(legacy=False) does);
- CONTROL and USER_DEFINED pieces (`<s>`, `<|EOT|>`, `<|BOT|>`, `<audio_N>`, ...) are matched as
  whole tokens inside the text (the converter adds both kinds as added tokens), and so is
  `<unk>`; here CONTROL pieces are loaded as USER_DEFINED so SentencePiece matches them;
- `encode(text, add_bos=True)` puts `<s>` (id 1) first: add_special_tokens with LlamaTokenizer's
  default add_bos_token, which EditX's tokenizer_config.json does not override.
"""
from __future__ import annotations

from pathlib import Path

from ..settings import LLM
from . import spm_proto

SPACE = "\u2581"  # "▁", SentencePiece's whitespace
UNK = "<unk>"
# id → piece the prompts rely on
REQUIRED_PIECES = {LLM.bos_id: "<s>", LLM.eot_id: "<|EOT|>", LLM.bot_id: "<|BOT|>",
                   LLM.audio_token_offset: "<audio_0>",
                   LLM.audio_token_offset + LLM.audio_tokens - 1: f"<audio_{LLM.audio_tokens - 1}>"}
SPECIAL_TYPES = (spm_proto.UNKNOWN, spm_proto.CONTROL, spm_proto.USER_DEFINED)


class TextTokenizer:
    def __init__(self, model_path: str | Path):
        import sentencepiece

        self.path = Path(model_path)
        pieces, rest = spm_proto.parse(self.path.read_bytes())
        self._check_vocab(pieces)
        as_added = [spm_proto.Piece(p.piece, p.score, spm_proto.USER_DEFINED)
                    if p.type == spm_proto.CONTROL else p for p in pieces]
        proto = spm_proto.serialize(as_added, rest + spm_proto.identity_normalizer(False))
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
        self.special_ids = frozenset(i for i, p in enumerate(pieces) if p.type in SPECIAL_TYPES)
        self.unk_id = next(i for i, p in enumerate(pieces) if p.type == spm_proto.UNKNOWN)
        self.space_id = self.sp.piece_to_id(SPACE)
        self.vocab_size = len(pieces)

    def _check_vocab(self, pieces: list[spm_proto.Piece]) -> None:
        def found(i: int) -> str:
            return repr(pieces[i].piece) if i < len(pieces) else "missing"

        wrong = [f"id {i} is {found(i)}, not {want!r}" for i, want in REQUIRED_PIECES.items()
                 if found(i) != repr(want)]
        if wrong:
            raise ValueError(f"{self.path} is not a Step-Audio-EditX text tokenizer: "
                             + "; ".join(wrong))

    def _encode_chunk(self, chunk: str, first: bool) -> list[int]:
        if not (first and not chunk.startswith((" ", SPACE))):
            return self.sp.encode(chunk)
        ids = self.sp.encode(SPACE + chunk)
        if len(ids) > 1 and ids[0] == self.space_id and ids[1] in self.special_ids:
            return ids[1:]  # the text starts with a special piece: no prefix
        return ids

    def encode(self, text: str, add_bos: bool) -> list[int]:
        ids = [LLM.bos_id] if add_bos else []
        for i, chunk in enumerate(text.split(UNK)):
            if i:
                ids.append(self.unk_id)
            if chunk:
                ids += self._encode_chunk(chunk, first=i == 0)
        return ids

    def decode(self, ids: list[int]) -> str:
        """Every piece as text (special pieces included), without the leading dummy-prefix space."""
        parts, run = [], []
        for i in map(int, ids):
            if i in self.special_ids:
                parts += [self.sp.decode(run), self.sp.id_to_piece(i)]
                run = []
            else:
                run.append(i)
        text = "".join(parts + [self.sp.decode(run)])
        return text[1:] if text.startswith(" ") else text
