"""Turn generated token ids into text pieces that never split a UTF-8 character, and cut the
text at stop strings without ever emitting any part of one."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

# Byte-level tokenizers decode an incomplete UTF-8 sequence to U+FFFD.
_INCOMPLETE = "\ufffd"


class TextStreamer:
    """Incremental detokenization: decode a short window of recent tokens, emit what is new.

    Decoding a window (not the token alone) keeps the spaces that SentencePiece-style
    tokenizers attach to word starts.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def put(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self.tokenizer.decode(
            self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True
        )
        full = self.tokenizer.decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith(_INCOMPLETE):
            new_text = full[len(prefix) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return new_text
        return ""

    def finish(self) -> str:
        """Whatever is still held back (an incomplete character is flushed as U+FFFD)."""
        prefix = self.tokenizer.decode(
            self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True
        )
        full = self.tokenizer.decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :] if full.startswith(prefix) else ""


class StopStringFilter:
    """Holds back text that could be the start of a stop string."""

    def __init__(self, stop: Sequence[str]):
        self.stop = [s for s in stop if s]
        self.pending = ""
        self.stopped = False

    def put(self, text: str) -> str:
        if self.stopped:
            return ""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[: min(hits)], ""
            return out
        hold = max((self._overlap(s) for s in self.stop), default=0)
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold :]
        return out

    def _overlap(self, stop: str) -> int:
        """Length of the longest suffix of `pending` that is a proper prefix of `stop`."""
        for n in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if self.pending.endswith(stop[:n]):
                return n
        return 0

    def finish(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out
