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

Where we differ: the prompts encode their text (templates and the client's texts) with
`encode_text`, in which no special piece is matched, so a typed "<|EOT|>" stays text; the only
special ids are those the prompt builder puts in itself and the checked `<audio_N>` run
(`encode_with_audio`). Text without a special piece's string gets the same ids either way.
"""
from __future__ import annotations

from pathlib import Path

from ..settings import LLM
from . import prompt_templates, spm_proto

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
        self._check_templates(pieces)

        def processor(retyped: int, loaded_as: int):
            typed = [spm_proto.Piece(p.piece, p.score, loaded_as) if p.type == retyped else p
                     for p in pieces]
            proto = spm_proto.serialize(typed, rest + spm_proto.identity_normalizer(False))
            return sentencepiece.SentencePieceProcessor(model_proto=proto)

        # specials matched inside the text (CONTROL loaded as USER_DEFINED), and never matched
        # (USER_DEFINED loaded as CONTROL, a type SentencePiece never takes from text)
        self.sp = processor(spm_proto.CONTROL, spm_proto.USER_DEFINED)
        self.text_sp = processor(spm_proto.USER_DEFINED, spm_proto.CONTROL)
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

    def _check_templates(self, pieces: list[spm_proto.Piece]) -> None:
        """The prompt templates are encoded as text (`encode_text`): a special piece inside
        their words would lose the id upstream's tokenizer gives it."""
        words = "\0".join(prompt_templates.TEXTS)
        found = sorted(p.piece for p in pieces if p.type in SPECIAL_TYPES and p.piece in words)
        if found:
            raise ValueError(f"{self.path}: the prompt templates hold its special pieces "
                             + ", ".join(map(repr, found)))

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

    def encode_text(self, text: str, add_bos: bool, first: bool = True) -> list[int]:
        """`text` as text only (the prompts' template and client text): a special piece's string
        in it ("<|EOT|>", "<s>", "<audio_5>", "<unk>") comes out as ordinary pieces, so a client
        cannot forge turns or audio. Text without such a string gets the ids `encode` gives it.
        `first`: the text starts the encoded string, so the dummy prefix goes before it."""
        prefix = SPACE if first and text and not text.startswith((" ", SPACE)) else ""
        return [LLM.bos_id] * add_bos + self.text_sp.encode(prefix + text)

    def encode_with_audio(self, before: str, audio: str, after: str, add_bos: bool) -> list[int]:
        """E(before + audio + after) in which only `audio`, a checked run of `<audio_N>`, gives
        special ids; the texts go through `encode_text`. SentencePiece never merges across a
        USER_DEFINED piece, so for texts without a special piece's string this is `encode` of
        the joined string."""
        return (self.encode_text(before, add_bos) + self.sp.encode(audio)
                + self.encode_text(after, add_bos=False, first=False))

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
