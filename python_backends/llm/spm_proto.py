"""The few SentencePiece `ModelProto` edits we need, read and written as protobuf wire records.

sentencepiece's bundled `sentencepiece_model_pb2` needs protobuf >= 5 and requirements.lock pins
4.25, so the three messages we touch are handled here. A protobuf parser appends repeated fields
and merges repeated occurrences of a message field, so appending a NormalizerSpec or TrainerSpec
record to a serialized model overrides just the fields that record sets.

Field numbers (sentencepiece_model.proto): ModelProto.pieces = 1, trainer_spec = 2,
normalizer_spec = 3; SentencePiece.piece = 1, score = 2, type = 3; TrainerSpec.vocab_size = 4;
NormalizerSpec.name = 1, precompiled_charsmap = 2, add_dummy_prefix = 3,
remove_extra_whitespaces = 4.
"""
from __future__ import annotations

import dataclasses
import struct

# SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


@dataclasses.dataclass(frozen=True)
class Piece:
    piece: str
    score: float = 0.0
    type: int = NORMAL


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _len_field(field: int, payload: bytes) -> bytes:
    return _key(field, _LEN) + _varint(len(payload)) + payload


def _bool_field(field: int, value: bool) -> bytes:
    return _key(field, _VARINT) + _varint(int(value))


def _records(data: bytes):
    """(field number, value, raw record bytes) of each top-level record; `value` is the payload
    of a length-delimited record, else the integer or fixed-width bytes."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
        elif wire == _LEN:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire == _FIXED32:
            value, pos = data[pos:pos + 4], pos + 4
        elif wire == _FIXED64:
            value, pos = data[pos:pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {start}")
        yield field, value, data[start:pos]


def _parse_piece(payload: bytes) -> Piece:
    text, score, kind = "", 0.0, NORMAL
    for field, value, _ in _records(payload):
        if field == 1:
            text = value.decode("utf-8")
        elif field == 2:
            score = struct.unpack("<f", value)[0]
        elif field == 3:
            kind = value
    return Piece(text, score, kind)


def parse(model: bytes) -> tuple[list[Piece], bytes]:
    """A serialized ModelProto → (its pieces in id order, every other record verbatim)."""
    pieces, rest = [], bytearray()
    for field, value, raw in _records(model):
        if field == 1:
            pieces.append(_parse_piece(value))
        else:
            rest += raw
    return pieces, bytes(rest)


def serialize(pieces: list[Piece], rest: bytes) -> bytes:
    """The inverse of `parse` (pieces first, as sentencepiece writes them)."""
    out = bytearray()
    for p in pieces:
        body = (_len_field(1, p.piece.encode("utf-8")) + _key(2, _FIXED32)
                + struct.pack("<f", p.score) + _key(3, _VARINT) + _varint(p.type))
        out += _len_field(1, body)
    return bytes(out) + rest


def trainer_vocab_size(size: int) -> bytes:
    """A TrainerSpec record setting vocab_size (appended after `rest`)."""
    return _len_field(2, _key(4, _VARINT) + _varint(size))


def identity_normalizer(add_dummy_prefix: bool) -> bytes:
    """A NormalizerSpec record: no character mapping, no whitespace collapsing."""
    return _len_field(3, _len_field(1, b"identity") + _len_field(2, b"")
                      + _bool_field(3, add_dummy_prefix) + _bool_field(4, False))
