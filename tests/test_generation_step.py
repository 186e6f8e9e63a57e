"""The one generation step (`runtime/generation.py`): each finish rule, in its order, and the
same answer from `ChatModule` and the batching engine."""

from __future__ import annotations

import numpy as np
import pytest

from mlc.runtime import GenerationConfig
from mlc.runtime.generation import GenerationStep
from mlc.testing.random_model import make_tokenizer

VOCAB = 320


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(VOCAB)


def _logits(token: int) -> np.ndarray:
    """Logits whose greedy pick is `token`."""
    logits = np.zeros(VOCAB, dtype=np.float32)
    logits[token] = 10.0
    return logits


def _step(tokenizer, kv_tokens=3, window=100, stop_ids=(), stop_strings=(), **config):
    config = GenerationConfig(temperature=0, **config).resolved({})
    return GenerationStep(tokenizer, config, [1, 2, 3], kv_tokens, window, stop_ids, stop_strings)


def _word_tokens(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def test_the_answer_goes_on_until_max_tokens(tokenizer):
    step = _step(tokenizer, max_tokens=3)
    outs = [step.step(_logits(t)) for t in (40, 41, 42)]
    assert [o.finish_reason for o in outs] == [None, None, "length"]
    assert all(o.appended for o in outs) and step.generated == [40, 41, 42]
    assert "".join(o.text for o in outs) == tokenizer.decode([40, 41, 42])


def test_max_tokens_zero_samples_nothing(tokenizer):
    step = _step(tokenizer, max_tokens=0)
    assert step.step(_logits(40)) is None
    assert step.finish_reason == "length" and step.generated == []


def test_a_stop_token_ends_the_answer_without_joining_it(tokenizer):
    step = _step(tokenizer, stop_ids=[7])
    assert step.step(_logits(40)).finish_reason is None
    out = step.step(_logits(7))
    assert (out.sampled, out.appended, out.finish_reason) == (7, False, "stop")
    assert step.generated == [40]


def test_a_request_stop_token_counts_as_the_model_s(tokenizer):
    out = _step(tokenizer, stop_token_ids=[9]).step(_logits(9))
    assert out.finish_reason == "stop" and not out.appended


def test_a_stop_string_cuts_the_text_before_it(tokenizer):
    ids = _word_tokens(tokenizer, "the cat sat on the mat")
    step = _step(tokenizer, stop_strings=["sat"])
    texts = []
    for token in ids:
        out = step.step(_logits(token))
        texts.append(out.text)
        if out.finish_reason:
            break
    assert out.finish_reason == "stop" and out.appended
    assert "".join(texts) == "the cat "


def test_a_full_kv_cache_ends_the_answer(tokenizer):
    # 3 tokens cached, window 5: the 1st and 2nd answer tokens are fed, the 3rd has no room.
    step = _step(tokenizer, kv_tokens=3, window=5)
    reasons = [step.step(_logits(t)).finish_reason for t in (40, 41, 42)]
    assert reasons == [None, None, "length"]


def test_interrupt_ends_after_the_current_token(tokenizer):
    step = _step(tokenizer, max_tokens=1)
    step.interrupt()
    out = step.step(_logits(40))
    assert out.appended and out.finish_reason == "interrupted"  # before "length"


def test_a_finished_step_takes_no_more_logits(tokenizer):
    step = _step(tokenizer, max_tokens=1)
    step.step(_logits(40))
    with pytest.raises(RuntimeError, match="has finished"):
        step.step(_logits(41))


def test_penalties_see_the_context_and_the_answer(tokenizer):
    # Token 2 is in the context: a strong repetition penalty makes the runner-up win.
    logits = np.zeros(VOCAB, dtype=np.float32)
    logits[2], logits[50] = 5.0, 4.0
    step = _step(tokenizer, repetition_penalty=2.0)
    assert step.step(logits).sampled == 50
    logits[50], logits[60] = 5.0, 4.9  # now 50 is in the answer
    assert step.step(logits).sampled == 60
