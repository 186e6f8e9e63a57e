"""`runtime/utf8_mask.py` against Python's incremental UTF-8 decoder (the reference): which byte
strings are valid UTF-8 prefixes, what an answer's incomplete last character is, and which
tokens may follow it."""

from __future__ import annotations

import codecs

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mlc.runtime.utf8_mask import Utf8Mask, incomplete_tail, is_valid_prefix

# Bytes weighted toward the interesting ones: ASCII, continuation bytes, every kind of lead byte
# (surrogate-making 0xED, overlong-making 0xE0/0xF0, 0xF4's limit, never-valid 0xC0/0xF5).
INTERESTING = [
    0x41,
    0x80,
    0x8F,
    0x90,
    0x9F,
    0xA0,
    0xBF,
    0xC0,
    0xC2,
    0xDF,
    0xE0,
    0xED,
    0xEF,
    0xF0,
    0xF4,
    0xF5,
]
BYTES = st.lists(st.sampled_from(INTERESTING) | st.integers(0, 255), max_size=8).map(bytes)


def decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def decoder_state(data: bytes) -> bytes | None:
    """The bytes Python's decoder holds back after `data`, or None when no completion makes
    `data` valid UTF-8. (The incremental decoder alone is lazy: it holds `ED A0`, which only
    ever begins a surrogate, so completions are tried: one of these first continuation bytes
    falls in every range RFC 3629 allows.)"""
    completions = [b""] + [
        bytes([f]) + b"\x80" * k for f in (0x80, 0x90, 0xA0, 0xBF) for k in range(3)
    ]
    if not any(decodes(data + c) for c in completions):
        return None
    decoder = codecs.getincrementaldecoder("utf-8")()
    decoder.decode(data, final=False)
    return decoder.getstate()[0]


@settings(max_examples=3000, deadline=None)
@given(BYTES)
def test_valid_prefix_and_tail_agree_with_python_s_decoder(data):
    held = decoder_state(data)
    assert is_valid_prefix(data) == (held is not None)
    if held is not None:
        assert incomplete_tail(data) == held


@settings(max_examples=300, deadline=None)
@given(st.lists(BYTES, min_size=1, max_size=30), BYTES)
def test_the_mask_allows_exactly_the_tokens_that_keep_the_text_valid(pieces, before):
    if decoder_state(before) is None:
        return  # the answer so far is always valid
    mask = Utf8Mask(pieces)
    allowed = mask.allowed(incomplete_tail(before))
    expected = np.array([decoder_state(before + p) is not None for p in pieces])
    assert (allowed == expected).all(), (before, pieces)
