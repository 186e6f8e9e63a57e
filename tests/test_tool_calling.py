"""Tool calling: each call format parses what it writes (whole and streamed), requests are
checked, conversations with tools render as `transformers.apply_chat_template` renders them, and
on a random-weight model every call a `required` or named tool choice makes validates against
its function's schema (`jsonschema`, a reference nobody here wrote)."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from mlc import ChatModule, GenerationConfig
from mlc.runtime.chat_template import JinjaChatTemplate
from mlc.runtime.conversation import get_template
from mlc.runtime.tool_calling import (
    FORMATS,
    HERMES,
    LLAMA3_JSON,
    MISTRAL,
    ModelTools,
    ToolCall,
    ToolCallStream,
    detect_format,
    parse_answer,
    tool_request,
)
from mlc.testing.random_model import make_tokenizer

GQA = {"num_key_value_heads": 2}
# The tools prompt takes about a thousand of the tiny tokenizer's tokens.
LONG = {"max_position_embeddings": 4096, **GQA}


def function(name: str, properties: dict, required: list[str] | None = None) -> dict:
    parameters = {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


# Every value bounded, so a call ends within `max_tokens` whatever the weights.
TOOLS = [
    function(
        "get_weather",
        {
            "city": {"type": "string", "maxLength": 6},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "unit": {"enum": ["c", "f"]},
        },
    ),
    function(
        "add",
        {
            "a": {"type": "integer", "minimum": -99, "maximum": 99},
            "b": {"type": "integer", "minimum": -99, "maximum": 99},
        },
    ),
    function("now", {}),
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
NAMED = {"type": "function", "function": {"name": "add"}}


def check_calls(calls: list[ToolCall], only: str | None = None) -> None:
    """At least one call; each to an offered function (`only`, when named), its arguments
    valid for that function's schema."""
    assert calls, "no tool call"
    for call in calls:
        assert call.name in SCHEMAS and call.name == (only or call.name), call
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
        assert call.id.startswith("call_")


# --- formats ------------------------------------------------------------------------------

CALLS = [
    ToolCall("get_weather", '{"city": "Pa}ris\\"", "days": 3, "unit": "c"}'),
    ToolCall("add", '{"a": {"x": [1, "]"]}, "b": 2}'),
]


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_each_format_parses_the_calls_it_writes(name):
    format_ = FORMATS[name]
    for calls in (CALLS[:1], CALLS):
        content, parsed = parse_answer(format_, format_.render_calls(calls))
        assert content == ""
        assert [(c.name, c.arguments) for c in parsed] == [(c.name, c.arguments) for c in calls]


def test_text_around_calls_is_content_and_a_lone_trigger_is_text():
    text = "Let me look.\n" + HERMES.render_calls(CALLS) + "\n"
    assert parse_answer(HERMES, text)[0] == "Let me look."
    plain = "I write <tool_call> as text, " + "and more " * 30
    assert parse_answer(HERMES, plain) == (plain.strip(), [])
    # An answer cut inside a call (max_tokens): the call so far, its arguments unfinished.
    content, calls = parse_answer(HERMES, 'Hi <tool_call>\n{"name": "add", "arguments": {"a": 1')
    assert content == "Hi" and calls[0].arguments == '{"a": 1'


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(FORMATS)),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=40),
    prefix=st.sampled_from(["", "Sure. ", "a <tool_c"]),
)
def test_streamed_deltas_add_up_to_the_whole_answer(name, cuts, prefix):
    """However the text is cut into pieces, the deltas joined (as an OpenAI client joins them)
    equal the answer parsed whole."""
    format_ = FORMATS[name]
    text = prefix + format_.render_calls(CALLS)
    stream = ToolCallStream(format_)
    deltas, last = [], 0
    for cut in sorted(set(cuts)):
        deltas.append(stream.feed(text[last:cut]))
        last = max(last, cut)
    deltas.append(stream.feed(text[last:]))
    deltas.append(stream.finish())
    content = "".join(d.content for d in deltas)
    joined: dict[int, dict] = {}
    for delta in deltas:
        for call in delta.calls:
            entry = joined.setdefault(call.index, {"id": call.id, "name": call.name, "args": ""})
            assert call.id is None or call.id == entry["id"]
            entry["args"] += call.arguments
    whole_content, whole_calls = parse_answer(format_, text)
    assert content == stream.content == whole_content
    assert [(e["name"], e["args"]) for e in joined.values()] == [
        (c.name, c.arguments) for c in whole_calls
    ]
    assert [e["id"] for e in joined.values()] == [c.id for c in stream.calls]


def test_formats_are_detected_from_the_template():
    assert detect_format(get_template("llama-3")) is LLAMA3_JSON
    assert detect_format(get_template("mistral")) is MISTRAL
    assert detect_format(get_template("chatml")) is HERMES
    assert detect_format(JinjaChatTemplate("{{ '[TOOL_CALLS]' }}", {})) is MISTRAL
    assert detect_format(JinjaChatTemplate("{{ '<|python_tag|>' }}", {})) is LLAMA3_JSON
    assert detect_format(JinjaChatTemplate("{{ messages }}", {})) is HERMES
    with pytest.raises(ValueError, match="unknown tool call format"):
        ModelTools(get_template("chatml"), "xml")


# --- requests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tools", "choice", "message"),
    [
        (None, "required", "tool_choice needs tools"),
        (TOOLS, "sometimes", "tool_choice must be one of"),
        (TOOLS, {"type": "function", "function": {"name": "fly"}}, "'fly', which tools do not"),
        (TOOLS, {"type": "function", "name": "add"}, "tool_choice must be"),
        ([{"type": "function", "function": {"name": "a b"}}], None, "name must be"),
        ([{"type": "retrieval"}], None, r"tools\[0\] must be"),
        ([TOOLS[1], TOOLS[1]], None, "'add' twice"),
        ([{"type": "function", "function": {"name": "f", "x": 1}}], None, "unknown fields"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],
            None,
            "JSON Schema of an object",
        ),
    ],
)
def test_bad_tool_requests_are_refused_naming_the_problem(tools, choice, message):
    with pytest.raises(ValueError, match=message):
        tool_request(tools, choice)
    with pytest.raises(ValueError, match=message):
        GenerationConfig(tools=tools, tool_choice=choice).resolved({})


def test_tool_choices():
    assert tool_request(None) is None and tool_request([]) is None
    request = tool_request(TOOLS)
    assert request.choice == "auto" and not request.must_call and request.max_calls is None
    named = tool_request(TOOLS, NAMED, parallel_tool_calls=True)
    assert [f.name for f in named.callable] == ["add"] and named.max_calls == 1
    assert tool_request(TOOLS, "none").callable == ()
    assert tool_request(TOOLS, "required", False).max_calls == 1
    with pytest.raises(ValueError, match="cannot be combined"):
        GenerationConfig(tools=TOOLS, response_format={"type": "json_object"}).resolved({})


# --- prompts ------------------------------------------------------------------------------

TOOL_TEMPLATE = (
    "{% if tools %}<|system|>Functions:{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n"
    "{% endif %}{% for m in messages %}"
    "{% if m.role == 'assistant' and m.tool_calls %}<|assistant|>{{ m.content }}"
    "{% for c in m.tool_calls %}<call>{{ c.function.name }} {{ c.function.arguments | tojson }}"
    "</call>{% endfor %}\n"
    "{% elif m.role == 'tool' %}<|tool|>{{ m.tool_call_id }}: {{ m.content }}\n"
    "{% else %}<|{{ m.role }}|>{{ m.content }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CONVERSATION = [
    {"role": "user", "content": "Add 2 and 3, then tell me the time."},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [CALLS[1].to_openai(), ToolCall("now", "{}", "call_2").to_openai()],
    },
    {"role": "tool", "tool_call_id": CALLS[1].id, "content": "5"},
    {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
]


def test_a_template_that_takes_tools_renders_as_transformers_does():
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=make_tokenizer(300))
    reference_messages = json.loads(json.dumps(CONVERSATION))
    for call in reference_messages[1]["tool_calls"]:  # templates get arguments as values
        call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    expected = tokenizer.apply_chat_template(
        reference_messages,
        tools=TOOLS,
        chat_template=TOOL_TEMPLATE,
        tokenize=False,
        add_generation_prompt=True,
    )
    template = JinjaChatTemplate(TOOL_TEMPLATE, {})
    assert template.takes_tools
    rendered = ModelTools(template).render(CONVERSATION, tool_request(TOOLS))
    assert rendered == expected
    assert '<call>add {"a": {"x": [1, "]"]}, "b": 2}</call>' in rendered


def test_a_template_without_tools_gets_them_written_into_the_turns():
    tools = ModelTools(get_template("chatml"))
    text = tools.render(CONVERSATION, tool_request(TOOLS))
    system = text[: text.index("<|im_end|>")]
    assert system.startswith("<|im_start|>system\n# Tools") and '"name": "get_weather"' in system
    assert HERMES.render_calls(CONVERSATION[1]["tool_calls"] and CALLS[1:]) in text
    assert "<|im_start|>user\n<tool_response>\n5\n</tool_response>\n<tool_response>\nnoon" in text
    assert text.endswith("<|im_start|>assistant\n")


# --- answers on a random-weight model -----------------------------------------------------


@pytest.fixture(scope="module")
def chat(tiny_builds) -> ChatModule:
    return ChatModule(str(tiny_builds.get("gqa-4k", **LONG)[1]), conv_template="chatml")


def ask(chat: ChatModule, seed: int, prompt: str = "Weather in Paris?", **settings):
    chat.reset_chat()
    settings = {"temperature": 1.0, "max_tokens": 160, "tools": TOOLS, **settings}
    text = chat.generate(prompt, GenerationConfig(seed=seed, **settings))
    return text, chat.last_tool_calls


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_required_and_named_calls_always_validate(chat, name):
    chat.tools = ModelTools(chat.template, name)
    try:
        for seed in range(5):
            text, calls = ask(chat, seed, tool_choice="required", parallel_tool_calls=False)
            assert chat.last_stats.finish_reason == "tool_calls" and len(calls) == 1
            assert text == ""
            check_calls(calls)
            text, calls = ask(chat, seed, tool_choice=NAMED)
            assert chat.last_stats.finish_reason == "tool_calls" and len(calls) == 1
            check_calls(calls, only="add")
    finally:
        chat.tools = ModelTools(chat.template)


def test_parallel_calls_validate_and_the_check_fails_without_the_grammar(chat):
    counts = []
    for seed in range(4):
        _, calls = ask(chat, seed, tool_choice="required")
        complete = calls if chat.last_stats.finish_reason == "tool_calls" else calls[:-1]
        check_calls(complete)
        counts.append(len(calls))
    assert max(counts) > 1  # random weights make more than one call somewhere
    text, calls = ask(chat, 0, tools=None)  # the same request, unconstrained
    with pytest.raises(AssertionError, match="no tool call"):
        check_calls(parse_answer(HERMES, text)[1])


def test_choice_none_and_auto(chat):
    for seed in range(4):
        text, calls = ask(chat, seed, tool_choice="none", max_tokens=40)
        assert calls == [] and "<tool_call>" not in text
        text, calls = ask(chat, seed, max_tokens=60)
        if chat.last_stats.finish_reason == "tool_calls":
            check_calls(calls)


def test_a_tool_conversation_streams_text_only_and_goes_on(chat):
    streamed: list[str] = []
    chat.reset_chat()
    config = GenerationConfig(seed=1, temperature=1.0, max_tokens=120, tools=TOOLS)
    settings = {"tool_choice": "required", "parallel_tool_calls": False}
    required = GenerationConfig(**{**vars(config), **settings})
    text = chat.generate("Weather in Paris?", required, streamed.append)
    calls = chat.last_tool_calls
    check_calls(calls)
    assert "".join(streamed) == text == ""
    assert chat.messages[-1]["tool_calls"] == [c.to_openai() for c in calls]
    results = [{"role": "tool", "tool_call_id": c.id, "content": "sunny"} for c in calls]
    history = len(chat.history_ids)
    text = chat.generate(results, GenerationConfig(**{**vars(config), "tool_choice": "none"}))
    assert "<tool_call>" not in text and chat.last_tool_calls == []
    # The results were appended to the KV cache, not the conversation re-fed.
    assert chat.last_stats.prefill_tokens < history / 4
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "tool", "assistant"]
    with pytest.raises(ValueError, match="role"):
        chat.generate([{"role": "assistant", "content": "x"}])
