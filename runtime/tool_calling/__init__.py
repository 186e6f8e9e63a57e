"""Tool calling: the functions a request offers (`spec`), the model's call syntax (`formats`),
calls parsed from a streamed answer (`parser`) and conversations with tools rendered for the
chat template (`prompt`). `ModelTools` ties them to one model's template."""

from __future__ import annotations

import json
from typing import Any

from ..chat_template import JinjaChatTemplate
from ..conversation import ConversationTemplate
from ..grammar import Constraint
from .formats import FORMATS, HERMES, LLAMA3_JSON, MISTRAL, ToolCallFormat
from .parser import CallDelta, Delta, ToolCallStream, parse_answer
from .prompt import for_plain_template, for_tool_template
from .spec import Function, ToolCall, ToolRequest, tool_request

__all__ = [
    "FORMATS",
    "CallDelta",
    "Delta",
    "Function",
    "ModelTools",
    "ToolCall",
    "ToolCallFormat",
    "ToolCallStream",
    "ToolRequest",
    "detect_format",
    "parse_answer",
    "tool_request",
]

Template = ConversationTemplate | JinjaChatTemplate


def detect_format(template: Template) -> ToolCallFormat:
    """The call syntax the template's model was trained on: Mistral's `[TOOL_CALLS]`, Llama
    3.1's JSON, else Hermes `<tool_call>` blocks (Qwen, Hermes, SmolLM and most others)."""
    if isinstance(template, JinjaChatTemplate):
        source = template.source
        if "[TOOL_CALLS]" in source:
            return MISTRAL
        if "<|python_tag|>" in source or (
            "<|start_header_id|>" in source and '"parameters"' in source
        ):
            return LLAMA3_JSON
        return HERMES
    return {"llama-3": LLAMA3_JSON, "mistral": MISTRAL}.get(template.name, HERMES)


class ModelTools:
    """Tool calling for one model: its call format, and how its template receives tools."""

    def __init__(self, template: Template, format_name: str | None = None):
        if format_name is not None and format_name not in FORMATS:
            raise ValueError(
                f"unknown tool call format {format_name!r}; known: {', '.join(sorted(FORMATS))}"
            )
        self.template = template
        self.format = FORMATS[format_name] if format_name else detect_format(template)

    def render(self, messages: list[dict[str, Any]], request: ToolRequest | None) -> str:
        """The conversation (which may hold tool calls and results) as the template writes it,
        with the request's tools."""
        template = self.template
        if isinstance(template, JinjaChatTemplate) and template.takes_tools:
            shaped, tools = for_tool_template(messages, request)
            return template.render(shaped, tools)
        return template.render(for_plain_template(messages, request, self.format))

    def constraint(self, request: ToolRequest) -> Constraint:
        """The grammar an answer to `request` follows: calls only to the callable functions,
        with arguments that match their schemas; none at all for tool choice "none"."""
        tag = self.format.structural_tag(request)
        begins = self.format.arguments_begins(request)
        return Constraint("structural_tag", json.dumps(tag, sort_keys=True), begins)

    def stream(self) -> ToolCallStream:
        return ToolCallStream(self.format)
