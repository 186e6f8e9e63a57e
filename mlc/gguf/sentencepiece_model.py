"""Read a SentencePiece `tokenizer.model` (a protobuf `ModelProto`) without protobuf.

Only what GGUF's `llama` tokenizer kind stores: pieces, scores, piece types (same numbering as
ggml's token types), the special ids and whether a space is prepended.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SentencePieceModel:
    pieces: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)  # 1 normal, 2 unknown, 3 control, 4 user, 6 byte
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    add_dummy_prefix: bool = True


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _fields(data: bytes):
    """(field number, wire type, value) of each field of one protobuf message."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def read_sentencepiece_model(path: Path) -> SentencePieceModel:
    model = SentencePieceModel()
    for number, _, value in _fields(Path(path).read_bytes()):
        if number == 1:  # repeated SentencePiece {piece = 1, score = 2, type = 3}
            piece, score, kind = "", 0.0, 1
            for sub, _, v in _fields(value):
                if sub == 1:
                    piece = v.decode("utf-8")
                elif sub == 2:
                    score = struct.unpack("<f", v)[0]
                elif sub == 3:
                    kind = v
            model.pieces.append(piece)
            model.scores.append(score)
            model.types.append(kind)
        elif number == 2:  # TrainerSpec: unk_id 40, bos_id 41, eos_id 42, pad_id 43
            ids = {40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}
            for sub, _, v in _fields(value):
                if sub in ids:
                    setattr(model, ids[sub], _signed(v))
        elif number == 3:  # NormalizerSpec: add_dummy_prefix 3
            for sub, _, v in _fields(value):
                if sub == 3:
                    model.add_dummy_prefix = bool(v)
    return model
