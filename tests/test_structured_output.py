"""Grammar-constrained answers from `ChatModule` on a random-weight model: the hardest case,
where only the grammar keeps the output valid. Validity is judged by `jsonschema` and Python's
`re`, references nobody here wrote."""

from __future__ import annotations

import json
import re
import sys

import jsonschema
import numpy as np
import pytest

from mlc import ChatModule, GenerationConfig
from mlc.runtime.grammar import GrammarError, GrammarUnavailable

GQA = {"num_key_value_heads": 2}

# Every value bounded, so a finished answer fits in `max_tokens` whatever the weights.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 5}, "zip": {"type": "boolean"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "address", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def chat(tiny_builds) -> ChatModule:
    return ChatModule(str(tiny_builds.get("gqa", **GQA)[1]))


def answer(chat: ChatModule, prompt: str, **settings) -> str:
    chat.reset_chat()
    settings = {"temperature": 1.0, "max_tokens": 200, **settings}
    return chat.generate(prompt, GenerationConfig(**settings))


def test_json_schema_answers_always_validate(chat):
    fmt = {"type": "json_schema", "schema": PERSON}
    for seed in range(12):
        text = answer(chat, "Describe a person.", response_format=fmt, seed=seed)
        assert chat.last_stats.finish_reason == "stop", text
        jsonschema.validate(json.loads(text), PERSON)


def test_the_check_fails_an_unconstrained_answer(chat):
    text = answer(chat, "Describe a person.", seed=0)
    with pytest.raises((ValueError, jsonschema.ValidationError)):
        jsonschema.validate(json.loads(text), PERSON)


def test_regex_and_grammar_answers_match(chat):
    pattern = r"[0-9]{4}-(0[1-9]|1[0-2])-[0-3][0-9]"
    grammar = 'root ::= "yes" | "no" | ("maybe " [a-z]{1,3})'
    for seed in range(6):
        text = answer(chat, "A date?", regex=pattern, seed=seed)
        assert re.fullmatch(pattern, text), text
        text = answer(chat, "Well?", grammar=grammar, seed=seed)
        assert re.fullmatch(r"yes|no|maybe [a-z]{1,3}", text), text
        assert chat.last_stats.finish_reason == "stop"


def test_forced_spans_are_fed_and_the_conversation_goes_on(chat):
    """Jump-forward: the keys the schema forces join the answer without sampling, are fed to
    the model, and the next turn continues from them."""
    fmt = {"type": "json_schema", "schema": PERSON}
    text = answer(chat, "Describe a person.", response_format=fmt, seed=3)
    ids = chat.last_output_ids
    assert chat.tokenizer.decode(ids) == text
    assert chat.last_stats.finish_reason == "stop"  # by a stop token: every answer token was fed
    assert 10 < chat.last_stats.forced_tokens < len(ids)
    assert chat.engine.num_cached_tokens == len(chat.history_ids)
    assert chat.history_ids[-len(ids) :] == ids
    chat.generate("And another?", GenerationConfig(temperature=0, max_tokens=4))
    assert chat.engine.num_cached_tokens == len(chat.history_ids)


def test_logit_bias_forces_and_bans_tokens(chat):
    forced = chat.tokenizer.token_to_id("a")
    answer(chat, "Hi", logit_bias={forced: 100}, max_tokens=8, stop_token_ids=[])
    assert chat.last_output_ids == [forced] * 8
    greedy = answer(chat, "Hi", temperature=0, max_tokens=3)
    first = chat.last_output_ids[0]
    answer(chat, "Hi", temperature=0, max_tokens=3, logit_bias={first: -100})
    assert chat.last_output_ids[0] != first, greedy


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        (
            {"response_format": {"type": "json_schema", "schema": {"type": 5}}},
            GrammarError,
            "JSON schema does not compile",
        ),
        ({"regex": "(("}, GrammarError, "regex does not compile"),
        ({"grammar": "root ::= x"}, GrammarError, 'Rule "x" is not defined'),
        (
            {"regex": r"[^\s\S]"},
            GrammarError,
            "the regex admits no output",
        ),
        ({"response_format": {"type": "xml"}}, ValueError, "type must be one of"),
        ({"response_format": {"type": "json_schema"}}, ValueError, "needs a 'schema'"),
        ({"response_format": {"type": "json_object", "schema": {}}}, ValueError, "takes no schema"),
        ({"regex": "a", "grammar": 'root ::= "a"'}, ValueError, "at most one"),
        ({"logit_bias": {1: 101}}, ValueError, "must be a number in [-100, 100]"),
        ({"logit_bias": {10**6: 1}}, ValueError, "outside the vocabulary"),
    ],
)
def test_bad_constraints_are_refused_naming_the_problem(chat, settings, error, message):
    with pytest.raises(error, match=re.escape(message)):
        answer(chat, "x", **settings)


def test_an_unknown_setting_is_a_type_error():
    with pytest.raises(TypeError, match="response_fromat"):
        GenerationConfig(response_fromat={"type": "json_object"})


def test_the_mask_follows_the_grammar(chat):
    """At `{"name": "ab", "age": ` only an integer in [0, 120] may follow: digits, never a
    quote, a brace, a minus sign or a stop token; masked logits are -inf exactly where the mask
    forbids."""
    fmt = {"type": "json_schema", "schema": PERSON}
    state = chat._constraint(GenerationConfig(response_format=fmt).resolved({}))
    for token in chat.tokenizer.encode('{"name": "ab", "age": ', add_special_tokens=False).ids:
        state.accept(token)
    allowed = state.allowed()
    token = chat.tokenizer.token_to_id
    assert all(allowed[token(d)] for d in "0123456789")
    assert not any(allowed[token(c)] for c in '"}-a')
    assert not any(allowed[t] for t in chat.stop_token_ids)
    logits = state.mask(np.zeros(chat.engine.vocab_size, dtype=np.float32))
    assert np.isneginf(logits[~allowed]).all() and (logits[allowed] == 0).all()


def test_without_xgrammar_the_error_names_the_install_command(tiny_builds, monkeypatch):
    monkeypatch.setitem(sys.modules, "xgrammar", None)  # as if it were not installed
    cm = ChatModule(str(tiny_builds.get("gqa", **GQA)[1]))
    with pytest.raises(GrammarUnavailable, match=re.escape('pip install "mlc[grammar]"')):
        cm.generate("x", GenerationConfig(response_format={"type": "json_object"}))
    assert cm.generate("x", GenerationConfig(max_tokens=2))  # plain answers still work
