"""Which tokens keep an answer valid UTF-8.

Byte-level vocabularies hold tokens of single bytes and partial characters, so a sampled answer
can be invalid UTF-8 (a surrogate's bytes, a lead byte without its continuation). A grammar
engine that counts such bytes as characters lets them into strings that JSON readers refuse or
count differently; `Utf8Mask` allows only the tokens that keep the answer a valid UTF-8 prefix.
"""

from __future__ import annotations

import numpy as np

CONTINUATION = range(0x80, 0xC0)
# The first continuation byte after these lead bytes has a narrower range (RFC 3629): no
# overlong forms, no surrogates, nothing above U+10FFFF.
FIRST_RANGE = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def char_length(lead: int) -> int:
    """Bytes of the character `lead` begins; 0 when it cannot begin one."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def is_valid_prefix(data: bytes) -> bool:
    """Whether `data` is valid UTF-8 that may end inside a character."""
    i = 0
    while i < len(data):
        n = char_length(data[i])
        if n == 0:
            return False
        for j in range(1, n):
            if i + j == len(data):
                return True
            lo, hi = FIRST_RANGE.get(data[i], (0x80, 0xBF)) if j == 1 else (0x80, 0xBF)
            if not lo <= data[i + j] <= hi:
                return False
        i += n
    return True


def incomplete_tail(data: bytes) -> bytes:
    """The bytes after the last complete character (at most 3)."""
    for back in range(1, min(4, len(data) + 1)):
        n = char_length(data[-back])
        if n > 1:
            return data[-back:] if back < n else b""
        if n == 1:
            return b""
    return b""


class Utf8Mask:
    """Per-token facts, computed once per vocabulary, and the mask for a given tail."""

    def __init__(self, pieces: list[bytes]):
        """`pieces`: each token's bytes, by token id."""
        size = len(pieces)
        self.first = np.zeros(size, dtype=np.int16)  # first byte, -1 for an empty token
        # ok[r]: the token is valid where the answer still needs r continuation bytes, given
        # that its first byte is in range (checked per step).
        self.ok = np.zeros((4, size), dtype=bool)
        for index, piece in enumerate(pieces):
            if not piece:
                self.first[index] = -1
                self.ok[:, index] = True
                continue
            self.first[index] = piece[0]
            try:
                piece.decode("utf-8")
                self.ok[0, index] = True  # whole characters only: valid with no tail
                continue
            except UnicodeDecodeError:
                pass
            leading = next((k for k, b in enumerate(piece) if b not in CONTINUATION), len(piece))
            for r in range(4):
                if leading == len(piece):
                    self.ok[r, index] = len(piece) <= r  # still inside the character
                elif leading == r:
                    self.ok[r, index] = is_valid_prefix(piece[r:])

    def allowed(self, tail: bytes) -> np.ndarray:
        """Tokens that may follow an answer ending in the incomplete character `tail`."""
        if not tail:
            return self.ok[0]
        needed = char_length(tail[0]) - len(tail)
        lo, hi = FIRST_RANGE.get(tail[0], (0x80, 0xBF)) if len(tail) == 1 else (0x80, 0xBF)
        in_range = (self.first >= lo) & (self.first <= hi)
        return self.ok[needed] & (in_range | (self.first == -1))
