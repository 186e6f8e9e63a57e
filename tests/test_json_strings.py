"""The control-character guard of constrained JSON answers, judged by Python's `json` module:
a raw control character is forbidden wherever a string would take it (`json.loads` with
`strict=False`) or an escape is open, allowed where whitespace may go, and a value's end is found
where it ends."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from mlc.runtime.json_strings import ESCAPED, IN_STRING, OUTSIDE, ControlTokens, JsonStrings

BYTES = [bytes([b]) for b in range(128)]
BYTE_TOKENS = ControlTokens(BYTES)
SOH = 0x01  # a control character

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(value=values, begin=st.sampled_from(["", '{"name": "f", "arguments": ']), data=st.data())
def test_control_characters_are_forbidden_exactly_inside_strings(value, begin, data):
    document = json.dumps(value)
    guard = JsonStrings(BYTE_TOKENS, (begin,))
    text = "x " + begin if begin else ""
    guard.feed(text.encode())
    where = data.draw(st.integers(0, len(document)))
    for i, byte in enumerate(document.encode()):
        forbidden = guard.forbidden()
        assert forbidden is not None and not forbidden[byte]  # the document's own bytes pass
        if i == where:
            at = document[:i], document[i:]
            if _parses(at[0] + "\x01" + at[1], strict=False) or _parses(at[0] + "n" + at[1]):
                assert forbidden[SOH], ("inside a string", document, i)
            elif _parses(at[0] + " " + at[1]) and json.loads(at[0] + " " + at[1]) == value:
                assert not forbidden[SOH], ("between values", document, i)
        guard.feed(bytes([byte]))
    if begin and isinstance(value, dict | list | str):
        assert guard.forbidden() is None  # the value has ended: text again


def _parses(text: str, strict: bool = True) -> bool:
    try:
        json.loads(text, strict=strict)
    except ValueError:
        return False
    return True


def test_tokens_are_judged_by_every_byte_they_hold():
    tokens = ControlTokens([b'"\x01', b"ab\n", b"\\\n", b'"\n', b"\t", b"abc"])
    # From outside a string: '"\x01' opens one and puts a control character in it.
    assert tokens.forbidden[OUTSIDE].tolist() == [True, False, False, True, False, False]
    assert tokens.forbidden[IN_STRING].tolist() == [False, True, True, False, True, False]
    # After a backslash a quote is escaped: the string goes on.
    assert tokens.forbidden[ESCAPED].tolist() == [True, True, True, True, True, False]
