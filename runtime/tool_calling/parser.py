"""Tool calls out of a streamed answer: the text and the calls parsed so far, turned into the
deltas the OpenAI API streams (text, then each call's id and name, then its arguments in
pieces), so that the deltas joined equal the whole answer parsed at the end."""

from __future__ import annotations

import dataclasses

from .formats import Parsed, PartialCall, ToolCallFormat
from .spec import ToolCall, new_call_id


@dataclasses.dataclass
class CallDelta:
    """New text of call `index`: `id` and `name` come with its first delta."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None


@dataclasses.dataclass
class Delta:
    content: str = ""
    calls: list[CallDelta] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.calls)


class ToolCallStream:
    """Follows one answer's text (`feed` each streamed piece, then `finish`)."""

    def __init__(self, format_: ToolCallFormat):
        self.format = format_
        self.text = ""
        self._content = 0  # characters of content sent
        self._sent: list[tuple[str, int]] = []  # per call: its id, characters of arguments sent
        self.calls: list[ToolCall] = []
        self.content = ""

    def feed(self, piece: str) -> Delta:
        self.text += piece
        return self._delta(self.format.parse(self.text, final=False))

    def finish(self) -> Delta:
        """The rest, once the answer has ended; `content` and `calls` then hold the whole."""
        parsed = self.format.parse(self.text, final=True)
        delta = self._delta(parsed)
        self.content = parsed.content.strip()
        self.calls = [
            ToolCall(call.name, call.arguments, self._sent[i][0])
            for i, call in enumerate(parsed.calls)
        ]
        return delta

    def _delta(self, parsed: Parsed) -> Delta:
        delta = Delta()
        # Whitespace around the calls is not content: trailing whitespace waits for more text.
        content = parsed.content.strip()
        if len(content) > self._content:
            delta.content = content[self._content :]
            self._content = len(content)
        for index, call in enumerate(parsed.calls):
            delta_call = self._call_delta(index, call)
            if delta_call is not None:
                delta.calls.append(delta_call)
        return delta

    def _call_delta(self, index: int, call: PartialCall) -> CallDelta | None:
        if index == len(self._sent):
            call_id = new_call_id()
            self._sent.append((call_id, len(call.arguments)))
            return CallDelta(index, call.arguments, call_id, call.name)
        call_id, sent = self._sent[index]
        if len(call.arguments) <= sent:
            return None
        self._sent[index] = (call_id, len(call.arguments))
        return CallDelta(index, call.arguments[sent:])


def parse_answer(format_: ToolCallFormat, text: str) -> tuple[str, list[ToolCall]]:
    """A whole answer's text and calls, as its stream ends them."""
    stream = ToolCallStream(format_)
    stream.feed(text)
    stream.finish()
    return stream.content, stream.calls
