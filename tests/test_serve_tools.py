"""Tool calling through `mlc serve` with the real `openai` client: each tool choice, calls
streamed as deltas and reassembled by the client, a multi-turn agent loop, and bad tool requests
refused with a 400 naming the field. Arguments are validated with `jsonschema`."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from test_serve import CHAT, HI, openai_client, serving
from test_tool_calling import LONG, NAMED, TOOLS, check_calls

from mlc.runtime.tool_calling import ToolCall


@pytest.fixture(scope="module")
def server(tiny_builds):
    yield from serving(tiny_builds.get("gqa-4k", **LONG)[1], "--kv-cache-tokens", "8192")


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai_client(server)


ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def create(client: openai.OpenAI, **settings):
    body = {"messages": ASK, "tools": TOOLS, "temperature": 1.0, "max_tokens": 160, **settings}
    return client.chat.completions.create(model="", **body)


def check(calls, only: str | None = None) -> list[tuple[str, dict]]:
    """The calls (client objects) as (name, arguments), each valid for its function."""
    check_calls([ToolCall(c.function.name, c.function.arguments, c.id) for c in calls], only)
    return [(c.function.name, json.loads(c.function.arguments)) for c in calls]


def reassemble(chunks) -> tuple[str, list[dict], str | None]:
    """What a client rebuilds from streamed deltas: text, calls by index, finish reason."""
    text, calls, reason = "", {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = delta.id or call["id"]
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
            reason = choice.finish_reason or reason
    return text, [calls[i] for i in sorted(calls)], reason


def test_required_and_named_calls_whole_and_streamed(client):
    whole = create(client, tool_choice="required", parallel_tool_calls=False, n=3)
    for choice in whole.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert len(check(choice.message.tool_calls)) == 1
    named = create(client, tool_choice=NAMED, seed=3)
    assert check(named.choices[0].message.tool_calls, only="add")
    for seed in (1, 2):
        one = create(client, tool_choice="required", parallel_tool_calls=False, seed=seed)
        stream = create(
            client, tool_choice="required", parallel_tool_calls=False, seed=seed, stream=True
        )
        text, calls, reason = reassemble(stream)
        assert text == "" and reason == "tool_calls" and calls[0]["id"].startswith("call_")
        expected = one.choices[0].message.tool_calls
        assert [(c["name"], c["arguments"]) for c in calls] == [
            (c.function.name, c.function.arguments) for c in expected
        ]


def test_choice_none_and_auto(client):
    none = create(client, tool_choice="none", max_tokens=40, n=3)
    for choice in none.choices:
        assert choice.message.tool_calls is None and choice.finish_reason != "tool_calls"
        assert "<tool_call>" not in choice.message.content
    auto = create(client, max_tokens=60, n=4, seed=11)
    for choice in auto.choices:
        if choice.finish_reason == "tool_calls":
            check(choice.message.tool_calls)
        else:
            assert choice.message.tool_calls is None or choice.finish_reason == "length"


def test_an_agent_loop_gets_valid_calls_every_turn(client):
    """The client's loop: call, run the tool, send its result back, call again."""
    messages = list(ASK)
    for turn in range(3):
        response = create(client, messages=messages, tool_choice="required", seed=turn)
        choice = response.choices[0]
        assert choice.finish_reason in ("tool_calls", "length")
        calls = choice.message.tool_calls
        complete = calls if choice.finish_reason == "tool_calls" else calls[:-1]
        check(complete)
        messages.append(choice.message.model_dump(exclude_none=True))
        for call in calls:
            result = {"called": call.function.name, "ok": True}
            messages.append(
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}
            )
    final = create(client, messages=messages, tool_choice="none", max_tokens=20)
    assert final.choices[0].message.tool_calls is None


UNCOMPILABLE = {
    "type": "function",
    "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": 5}}}},
}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "fly"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [TOOLS[1], TOOLS[1]]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools.0.function.name"),
        ({"tools": [UNCOMPILABLE]}, "tools"),
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, None),
        ({"functions": [{"name": "f"}]}, "functions"),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": []}]},
            "messages.0.tool_calls",
        ),
    ],
)
def test_bad_tool_requests_are_a_400_naming_the_field(server, body, param):
    response = httpx.post(f"{server.url}{CHAT}", json={"messages": HI, "max_tokens": 4, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text
    assert response.json()["error"]["message"]
