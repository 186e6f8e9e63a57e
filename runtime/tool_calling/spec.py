"""What a request asks of tool calling: the functions offered, the tool choice, and the calls an
answer makes, checked and normalised from the OpenAI API's shapes."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from typing import Any

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CHOICES = ("none", "auto", "required")
_FUNCTION_KEYS = {"name", "description", "parameters", "strict"}
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclasses.dataclass(frozen=True)
class Function:
    """A function the model may call; `parameters` is the JSON Schema of its arguments object."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(EMPTY_PARAMETERS))

    def to_openai(self) -> dict[str, Any]:
        """As `tools` entries are written in the OpenAI API (and chat templates receive them)."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """One call an answer makes: the function's name and its arguments as JSON text."""

    name: str
    arguments: str
    id: str = dataclasses.field(default_factory=lambda: new_call_id())

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }

    def parsed_arguments(self) -> Any:
        """The arguments as a JSON value (`ValueError` when they are not JSON)."""
        return json.loads(self.arguments)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclasses.dataclass(frozen=True)
class ToolRequest:
    """The functions offered and how the answer may use them: `choice` is "none", "auto",
    "required" or "function" (then `function` names the one to call); `parallel` allows more
    than one call per answer."""

    functions: tuple[Function, ...]
    choice: str = "auto"
    function: str | None = None
    parallel: bool = True

    @property
    def callable(self) -> tuple[Function, ...]:
        """The functions the answer may call."""
        if self.choice == "none":
            return ()
        if self.choice == "function":
            return tuple(f for f in self.functions if f.name == self.function)
        return self.functions

    @property
    def must_call(self) -> bool:
        return self.choice in ("required", "function")

    @property
    def max_calls(self) -> int | None:
        """At most this many calls (None: no limit)."""
        return 1 if self.choice == "function" or not self.parallel else None


def tool_request(
    tools: Any, tool_choice: Any = None, parallel_tool_calls: Any = None
) -> ToolRequest | None:
    """The checked request (None when there are no tools and no choice); `ValueError` naming
    what is wrong otherwise."""
    if tools is None or tools == []:
        if tool_choice not in (None, "none"):
            raise ValueError("tool_choice needs tools: give the functions the model may call")
        if parallel_tool_calls not in (None, True, False):
            raise ValueError("parallel_tool_calls must be true or false")
        return None
    if not isinstance(tools, list | tuple):
        raise ValueError("tools must be a list of {'type': 'function', 'function': {...}}")
    functions = tuple(_function(tool, i) for i, tool in enumerate(tools))
    names = [f.name for f in functions]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ValueError(f"tools name the function {duplicate!r} twice")
    if parallel_tool_calls not in (None, True, False):
        raise ValueError("parallel_tool_calls must be true or false")
    parallel = parallel_tool_calls is not False
    if tool_choice is None:
        return ToolRequest(functions, "auto", None, parallel)
    if isinstance(tool_choice, str):
        if tool_choice not in CHOICES:
            raise ValueError(
                f"tool_choice must be one of {CHOICES} or {{'type': 'function', 'function': "
                f"{{'name': ...}}}}, not {tool_choice!r}"
            )
        return ToolRequest(functions, tool_choice, None, parallel)
    name = _named_choice(tool_choice)
    if name not in names:
        raise ValueError(f"tool_choice names the function {name!r}, which tools do not offer")
    return ToolRequest(functions, "function", name, parallel)


def _named_choice(choice: Any) -> str:
    function = choice.get("function") if isinstance(choice, dict) else None
    if (
        not isinstance(choice, dict)
        or choice.get("type") != "function"
        or set(choice) != {"type", "function"}
        or not isinstance(function, dict)
        or set(function) != {"name"}
        or not isinstance(function["name"], str)
    ):
        raise ValueError(
            "tool_choice must be 'none', 'auto', 'required' or "
            "{'type': 'function', 'function': {'name': NAME}}"
        )
    return function["name"]


def _function(tool: Any, index: int) -> Function:
    where = f"tools[{index}]"
    if not isinstance(tool, dict) or tool.get("type") != "function" or "function" not in tool:
        raise ValueError(f"{where} must be {{'type': 'function', 'function': {{...}}}}")
    if set(tool) - {"type", "function"}:
        raise ValueError(f"{where} has unknown fields {sorted(set(tool) - {'type', 'function'})}")
    spec = tool["function"]
    if not isinstance(spec, dict):
        raise ValueError(f"{where}.function must be an object")
    unknown = sorted(set(spec) - _FUNCTION_KEYS)
    if unknown:
        raise ValueError(f"{where}.function has unknown fields {unknown}")
    name = spec.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(
            f"{where}.function.name must be 1 to 64 letters, digits, '_' or '-', not {name!r}"
        )
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise ValueError(f"{where}.function.description must be a string")
    parameters = spec.get("parameters", EMPTY_PARAMETERS)
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise ValueError(
            f"{where}.function.parameters must be a JSON Schema of an object "
            "({'type': 'object', 'properties': {...}})"
        )
    if spec.get("strict") not in (None, True, False):
        raise ValueError(f"{where}.function.strict must be true or false")
    return Function(name, description, {"type": "object", **parameters})
