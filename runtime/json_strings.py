"""Keeps raw control characters out of JSON strings while a constrained answer is written.

xgrammar's length-bounded JSON strings admit control characters (U+0000-U+001F) that JSON
forbids unescaped. `ControlTokens` knows, for each token that holds one, whether it would put
one inside a string from each scanner state; `JsonStrings` follows one answer's bytes: where the
JSON values begin (after given texts, or at once), whether it is inside a string, and when each
value ends.
"""

from __future__ import annotations

import numpy as np

OUTSIDE, IN_STRING, ESCAPED = 0, 1, 2
_QUOTE, _BACKSLASH = 0x22, 0x5C


def _step(state: int, byte: int) -> tuple[int, bool]:
    """The scanner's next state and whether `byte` is a raw control character in a string."""
    if state == OUTSIDE:
        return (IN_STRING if byte == _QUOTE else OUTSIDE), False
    if state == ESCAPED:
        return IN_STRING, byte < 0x20
    if byte == _BACKSLASH:
        return ESCAPED, False
    if byte == _QUOTE:
        return OUTSIDE, False
    return IN_STRING, byte < 0x20


class ControlTokens:
    """Per vocabulary: `forbidden[state]` marks the tokens that would put a raw control character
    inside a JSON string when read from scanner `state`."""

    def __init__(self, pieces: list[bytes]):
        self.forbidden = np.zeros((3, len(pieces)), dtype=bool)
        for token, piece in enumerate(pieces):
            if not any(b < 0x20 for b in piece):
                continue
            for start in (OUTSIDE, IN_STRING, ESCAPED):
                state = start
                for byte in piece:
                    state, bad = _step(state, byte)
                    if bad:
                        self.forbidden[start, token] = True
                        break


class JsonStrings:
    """One answer's scanner: JSON values begin right after any of `begins` ("" for the start of
    the answer); each ends where its outermost object, array or string closes."""

    def __init__(self, tokens: ControlTokens, begins: tuple[str, ...]):
        self.tokens = tokens
        self.begins = tuple(b.encode() for b in begins)
        self._window = max((len(b) for b in self.begins), default=1) or 1
        self.seen = b""  # the answer's last bytes, while outside a value
        self.inside = b"" in self.begins
        self.state = OUTSIDE
        self.depth = 0

    def forbidden(self) -> np.ndarray | None:
        """The tokens not allowed next, or None where no JSON value is being written."""
        return self.tokens.forbidden[self.state] if self.inside else None

    def feed(self, data: bytes) -> None:
        for byte in data:
            if not self.inside:
                self.seen = (self.seen + bytes([byte]))[-self._window :]
                if any(self.seen.endswith(b) for b in self.begins):
                    self.inside, self.state, self.depth = True, OUTSIDE, 0
                continue
            was_string = self.state != OUTSIDE
            self.state, _ = _step(self.state, byte)
            if self.state == OUTSIDE:
                if byte in b"{[":
                    self.depth += 1
                elif byte in b"}]":
                    self.depth -= 1
                if self.depth <= 0 and (byte in b"}]" or was_string):
                    self._leave()

    def _leave(self) -> None:
        """The value has ended."""
        self.inside, self.seen, self.depth = False, b"", 0
        if b"" in self.begins:
            self.inside = True
