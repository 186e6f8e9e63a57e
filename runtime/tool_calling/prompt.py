"""Conversations with tools, as a chat template receives them.

A template that takes `tools` (as `transformers.apply_chat_template` passes them) gets the
messages whole: assistant `tool_calls` with their arguments as JSON values, `tool` messages as
they are. A template that knows nothing of tools gets plain turns: the functions and how to call
them appended to the system message, calls written into the assistant's text in the model's
format, and each run of tool results as one user turn.
"""

from __future__ import annotations

import json
from typing import Any

from .formats import ToolCallFormat
from .spec import ToolCall, ToolRequest


def calls_of(message: dict[str, Any]) -> list[ToolCall]:
    """An assistant message's `tool_calls` (OpenAI dicts or `ToolCall`s)."""
    calls = []
    for call in message.get("tool_calls") or ():
        if isinstance(call, ToolCall):
            calls.append(call)
        else:
            function = call["function"]
            calls.append(ToolCall(function["name"], function["arguments"], call.get("id") or ""))
    return calls


def for_tool_template(
    messages: list[dict[str, Any]], request: ToolRequest | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Messages and `tools` for a template that renders tools itself."""
    shaped = []
    for message in messages:
        calls = calls_of(message)
        if message["role"] == "assistant" and calls:
            message = {
                **message,
                "content": message.get("content") or "",
                "tool_calls": [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": _arguments_value(c)},
                    }
                    for c in calls
                ],
            }
        shaped.append(message)
    tools = [f.to_openai() for f in request.functions] if request is not None else None
    return shaped, tools


def for_plain_template(
    messages: list[dict[str, Any]], request: ToolRequest | None, format_: ToolCallFormat
) -> list[dict[str, str]]:
    """Plain user/assistant/system turns for a template without tools (see the module
    docstring)."""
    turns: list[dict[str, str]] = []
    results: list[str] = []

    def flush() -> None:
        if results:
            turns.append({"role": "user", "content": format_.render_results(results)})
            results.clear()

    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "tool":
            results.append(content)
            continue
        flush()
        if role == "assistant":
            calls = calls_of(message)
            if calls:
                written = format_.render_calls(calls)
                content = f"{content}\n{written}" if content else written
        turns.append({"role": role, "content": content})
    flush()
    if request is not None and request.functions:
        tools = format_.system_prompt(request.functions)
        if turns and turns[0]["role"] == "system":
            turns[0] = {"role": "system", "content": f"{turns[0]['content']}\n\n{tools}"}
        else:
            turns.insert(0, {"role": "system", "content": tools})
    return turns


def _arguments_value(call: ToolCall) -> Any:
    """Arguments as a JSON value (templates write them with `tojson`); text that is not JSON
    stays text."""
    try:
        return json.loads(call.arguments)
    except ValueError:
        return call.arguments
