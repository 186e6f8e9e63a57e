"""How a model writes tool calls: Hermes/Qwen `<tool_call>` blocks, Llama 3.1 JSON and Mistral
`[TOOL_CALLS]`. A format parses an answer into text and calls (also while it streams), gives
xgrammar the structural tag that constrains the calls to the offered functions' schemas, and
writes tools, calls and results into a prompt for chat templates that know nothing of tools.

Every format wraps a call as `{"name": NAME, KEY: ARGUMENTS}` (KEY is "arguments", or
"parameters" for Llama 3.1): only the text around those objects differs.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from .spec import Function, ToolCall, ToolRequest

# How far past a trigger the parser waits for the call's header before taking the trigger for
# plain text (a name has at most 64 characters).
_HEADER_WAIT = 160


@dataclasses.dataclass
class PartialCall:
    """A call as parsed so far: `arguments` is the JSON text written yet, `complete` once its
    object has closed."""

    name: str
    arguments: str
    complete: bool


@dataclasses.dataclass
class Parsed:
    content: str
    calls: list[PartialCall]


@dataclasses.dataclass(frozen=True)
class ToolCallFormat:
    """One model family's tool-call syntax (see the module docstring).

    `trigger` starts a group of calls (and is xgrammar's trigger); `open` matches from the
    trigger to the first call's object, `separator` between two calls of one group (None: one
    call per group) and `close` after the group's last call. `arguments_key` names the
    arguments in the call object.
    """

    name: str
    trigger: str
    open: str
    close: str
    separator: str | None
    arguments_key: str
    # As written (and constrained): before a call object, between two groups, between calls.
    group_begin: str
    group_end: str
    group_separator: str
    call_separator: str

    # --- parsing ---------------------------------------------------------------------------

    def parse(self, text: str, final: bool = True) -> Parsed:
        """Text and calls of an answer. While streaming (`final` false), text that may still
        become part of a call is held back, and the last call may be partial."""
        content: list[str] = []
        calls: list[PartialCall] = []
        pos = 0
        while True:
            start = text.find(self.trigger, pos)
            if start < 0:
                tail = text[pos:]
                if not final:
                    tail = tail[: len(tail) - _held(tail, self.trigger)]
                content.append(tail)
                break
            content.append(text[pos:start])
            end = self._group(text, start, calls, final)
            if end is None:  # the text ends inside the group
                break
            if end < 0:  # the trigger was plain text
                content.append(self.trigger)
                pos = start + len(self.trigger)
                continue
            pos = end
        return Parsed("".join(content), calls)

    def _group(self, text: str, start: int, calls: list[PartialCall], final: bool) -> int | None:
        """Parse one group of calls at `start`; its end, -1 when it is not a call group, or
        None when the text ends inside it."""
        opened = re.compile(self.open).match(text, start)
        if opened is None:
            return _undecided(text, start, final)
        pos = opened.end()
        first = True
        header = re.compile(
            r'\s*\{\s*"name"\s*:\s*"(?P<name>[^"\\]*)"\s*,\s*"(?:'
            + self.arguments_key
            + r')"\s*:\s*(?=\{)'
        )
        while True:
            if not first:
                between = re.compile(self.separator or r"(?!)").match(text, pos)
                if between is None:
                    break
                pos = between.end()
            match = header.match(text, pos)
            if match is None:
                if first:
                    return _undecided(text, start, final)
                return None if not final else pos
            first = False
            arguments_end = json_object_end(text, match.end())
            arguments = text[match.end() : arguments_end or len(text)]
            calls.append(PartialCall(match["name"], arguments, arguments_end is not None))
            if arguments_end is None:
                return None
            closed = re.compile(r"\s*\}").match(text, arguments_end)
            if closed is None:
                return None if not final else arguments_end
            pos = closed.end()
            if self.separator is None:
                break
        ended = re.compile(self.close).match(text, pos)
        if ended is None:
            return None if not final else pos
        return ended.end()

    # --- constraining ----------------------------------------------------------------------

    def call_begin(self, function: Function) -> str:
        """The text before a call's arguments object, as constrained."""
        name = json.dumps(function.name)
        return f'{{"name": {name}, "{self.arguments_key.split("|")[0]}": '

    def structural_tag(self, request: ToolRequest) -> dict[str, Any]:
        """xgrammar's structural tag for the answer `request` allows."""
        if request.choice == "none":
            return _structural({"type": "any_text", "excludes": [self.trigger]})
        single = request.max_calls == 1
        calls = [
            {
                "type": "tag",
                "begin": self.call_begin(f),
                # At most one whitespace character in a row: compact enough to end.
                "content": {
                    "type": "json_schema",
                    "json_schema": f.parameters,
                    "max_whitespace_cnt": 1,
                },
                "end": "}",
            }
            for f in request.callable
        ]
        group = self._group_format(calls, single)
        if request.must_call:
            return _structural(group)
        return _structural(
            {
                "type": "triggered_tags",
                "triggers": [self.trigger],
                "tags": _as_tags(group),
                "stop_after_first": single or self.separator is not None,
            }
        )

    def _group_format(self, calls: list[dict[str, Any]], single: bool) -> dict[str, Any]:
        if self.separator is None:  # a group per call (Hermes, Llama 3.1)
            tags = [
                {**c, "begin": self.group_begin + c["begin"], "end": "}" + self.group_end}
                for c in calls
            ]
            if single:
                return {"type": "or", "elements": tags}
            return {
                "type": "tags_with_separator",
                "tags": tags,
                "separator": self.group_separator,
                "at_least_one": True,
            }
        inner = {
            "type": "tags_with_separator",
            "tags": calls,
            "separator": self.call_separator,
            "at_least_one": True,
            "stop_after_first": single,
        }
        return {"type": "tag", "begin": self.group_begin, "content": inner, "end": self.group_end}

    def arguments_begins(self, request: ToolRequest) -> tuple[str, ...]:
        """The texts after which an arguments object begins (each callable function's)."""
        return tuple(self.call_begin(f) for f in request.callable)

    # --- prompts for templates without tools -------------------------------------------------

    def render_calls(self, calls: list[ToolCall]) -> str:
        """An answer's calls as the model writes them."""
        objects = [self.call_begin(Function(c.name)) + c.arguments + "}" for c in calls]
        if self.separator is None:
            return self.group_separator.join(self.group_begin + o + self.group_end for o in objects)
        return self.group_begin + self.call_separator.join(objects) + self.group_end

    def system_prompt(self, functions: tuple[Function, ...]) -> str:
        """Tells the model the functions and how to call them."""
        signatures = "\n".join(json.dumps(f.to_openai(), ensure_ascii=False) for f in functions)
        example = self.render_calls([ToolCall("<function-name>", "<arguments-json-object>")])
        return (
            "# Tools\n\nYou may call functions to help answer the user. Their JSON signatures "
            f"are inside <tools></tools>:\n<tools>\n{signatures}\n</tools>\n\n"
            f"To call a function, answer with this and nothing else:\n{example}"
        )

    def render_results(self, results: list[str]) -> str:
        """The results of tool calls, as the next user turn tells them to the model."""
        return "\n".join(f"<tool_response>\n{r}\n</tool_response>" for r in results)


def json_object_end(text: str, start: int) -> int | None:
    """The index just past the JSON object (or other value) that begins at `start`, or None
    when the text ends inside it."""
    depth = 0
    in_string = escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _held(text: str, marker: str) -> int:
    """The length of the longest end of `text` that begins `marker` (it may become one)."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _undecided(text: str, start: int, final: bool) -> int | None:
    """At a trigger without a call header: wait for more text (None) unless the answer has
    ended or run too far past it to be a call (-1: plain text)."""
    return -1 if final or len(text) - start > _HEADER_WAIT else None


def _structural(format_: dict[str, Any]) -> dict[str, Any]:
    return {"type": "structural_tag", "format": format_}


def _as_tags(group: dict[str, Any]) -> list[dict[str, Any]]:
    """A group format as the tags `triggered_tags` dispatches to."""
    if group["type"] == "tag":
        return [group]
    return list(group.get("tags") or group["elements"])


HERMES = ToolCallFormat(
    name="hermes",
    trigger="<tool_call>",
    open=r"<tool_call>",
    close=r"\s*</tool_call>",
    separator=None,
    arguments_key="arguments",
    group_begin="<tool_call>\n",
    group_end="\n</tool_call>",
    group_separator="\n",
    call_separator="",
)
MISTRAL = ToolCallFormat(
    name="mistral",
    trigger="[TOOL_CALLS]",
    open=r"\[TOOL_CALLS\]\s*\[",
    close=r"\s*\]",
    separator=r"\s*,",
    arguments_key="arguments",
    group_begin="[TOOL_CALLS] [",
    group_end="]",
    group_separator="",
    call_separator=", ",
)
LLAMA3_JSON = ToolCallFormat(
    name="llama3_json",
    trigger='{"name": ',
    open=r"",
    close=r"",
    separator=None,
    arguments_key="parameters|arguments",
    group_begin="",
    group_end="",
    group_separator="\n",
    call_separator="",
)
FORMATS = {f.name: f for f in (HERMES, MISTRAL, LLAMA3_JSON)}
