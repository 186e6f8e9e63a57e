"""Speculative decoding: a chain's logits equal decode steps' bit for bit, so greedy answers
are identical to plain decoding's; sampled answers keep their distribution (chi-square against
the exact probabilities, with a control the check must reject)."""

from __future__ import annotations

import numpy as np
import pytest
from test_batch_engine import greedy_solo, run_engine
from test_sampling_distribution import chi_square
from tokenizers import Tokenizer
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

from mlc import ChatModule, GenerationConfig
from mlc.runtime import CompiledModel, batch_engine, chat_module
from mlc.runtime.batch_engine import BatchEngine
from mlc.runtime.generation import GenerationStep
from mlc.runtime.speculative import DraftModel, PromptLookup, SpeculationStats, decode_steps

GQA = {"num_key_value_heads": 2}
# Every code that runs on the CPU (the same builds as tests/test_batch_engine.py).
CPU_CODES = ["q0f32", "q0f16", "q4f32_1", "q4f16_1", "q3f16_1", "q8f16_1", "q4a8_1"]


def _decoded(model: CompiledModel, prompt: list[int], steps: int) -> tuple[list[int], list]:
    """Greedy tokens from decode steps and the logits each step returned."""
    model.reset()
    logits = model.prefill(prompt)
    tokens, rows = [int(np.argmax(logits))], []
    for _ in range(steps):
        rows.append(model.decode(tokens[-1]))
        tokens.append(int(np.argmax(rows[-1])))
    return tokens, rows


@pytest.mark.parametrize("code", CPU_CODES)
def test_a_chain_s_logits_equal_decode_steps_bit_for_bit(tiny_builds, code):
    """Chains of random lengths, keeping random parts of them, over prompts that end before,
    at and after the first page (where a sequence's first block splits off)."""
    _, built = tiny_builds.get("gqa", code, **GQA)
    model = CompiledModel(built)
    rng = np.random.default_rng(CPU_CODES.index(code))
    for prompt_len in (1, 5, 15, 16, 17, 40):
        prompt = rng.integers(3, 320, size=prompt_len).tolist()
        tokens, want = _decoded(model, prompt, 30)
        model.reset()
        model.prefill(prompt)
        got: list[np.ndarray] = []
        while len(got) < len(want):
            n = min(int(rng.integers(1, 9)), len(want) - len(got))
            rows = model.feed_chain(tokens[len(got) : len(got) + n])
            keep = int(rng.integers(1, n + 1))
            got.extend(rows[:keep])
            model.keep_chain(keep)  # the rest are dropped and fed again
        assert model.num_cached_tokens == prompt_len + len(want)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert np.array_equal(a, b), (code, prompt_len, i, float(np.abs(a - b).max()))


def test_a_chain_continues_a_prefix_kept_across_reset(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    model = CompiledModel(built, prefill_chunk_size=8)
    prompt = np.random.default_rng(5).integers(3, 320, size=27).tolist()
    tokens, want = _decoded(model, prompt, 6)
    model.reset(keep_prefix=True)
    model.prefill(prompt)
    assert model.reused_tokens == 24
    rows = model.feed_chain(tokens[:6])
    model.keep_chain(6)
    assert all(np.array_equal(a, b) for a, b in zip(rows, want, strict=True))


def test_keep_chain_is_required_before_the_cache_runs_again(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    model = CompiledModel(built)
    model.prefill([5, 6, 7])
    model.feed_chain([8, 9])
    with pytest.raises(RuntimeError, match="keep_chain"):
        model.decode(10)
    with pytest.raises(ValueError, match="cannot keep 3"):
        model.keep_chain(3)
    model.keep_chain(1)
    assert model.num_cached_tokens == 4
    with pytest.raises(RuntimeError, match="no chain is pending"):
        model.keep_chain(0)
    with pytest.raises(ValueError, match="1 to"):
        model.feed_chain([])


class NoisyOracle:
    """Guesses the known answer from where the context stands, with random wrong tokens and
    lengths, so that passes keep all, some and none of their drafts."""

    def __init__(self, prompt: list[int], answer: list[int], seed: int):
        self.text, self.start = [*prompt, *answer], len(prompt)
        self.rng = np.random.default_rng(seed)

    def propose(self, context: list[int], max_tokens: int) -> list[int]:
        assert context == self.text[: len(context)], "the context must be the answer so far"
        guess = self.text[len(context) : len(context) + int(self.rng.integers(0, max_tokens + 1))]
        return [t if self.rng.random() < 0.8 else int(self.rng.integers(3, 320)) for t in guess]


def _answer(model, tokenizer, prompt, config, drafter=None, stop=()):
    model.reset()
    logits = model.prefill(prompt)
    step = GenerationStep(
        tokenizer, config, prompt, model.num_cached_tokens, model.context_window_size, stop
    )
    stats = SpeculationStats()
    outs = list(decode_steps(model, step, logits, list(prompt), drafter, 6, stats))
    text = "".join(o.text for o in outs)
    return step.generated, text, step.finish_reason, stats


@pytest.mark.parametrize("code", ["q0f32", "q4a8_1"])
def test_greedy_answers_are_identical_with_drafts(tiny_builds, code):
    """Drafts kept in part and in full, answers ended by max_tokens, a stop token and a stop
    string: the same tokens, text and finish reason as plain decoding."""
    _, built = tiny_builds.get("gqa", code, **GQA)
    tokenizer = Tokenizer.from_file(str(built / "tokenizer.json"))
    model = CompiledModel(built)
    rng = np.random.default_rng(7)
    totals = SpeculationStats()
    for case in range(8):
        prompt = rng.integers(3, 320, size=int(rng.integers(2, 30))).tolist()
        plain = GenerationConfig(temperature=0, max_tokens=40).resolved({})
        tokens, text, _, _ = _answer(model, tokenizer, prompt, plain)
        stop = {tokens[int(rng.integers(5, 30))]} if case % 3 == 1 else set()
        strings = [text[len(text) // 2 :][:3]] if case % 3 == 2 else None
        config = GenerationConfig(temperature=0, max_tokens=40, stop=strings).resolved({})
        want = _answer(model, tokenizer, prompt, config, stop=stop)
        oracle = NoisyOracle(prompt, want[0], seed=case)
        got = _answer(model, tokenizer, prompt, config, oracle, stop=stop)
        assert got[:3] == want[:3], (code, case)
        for name in ("passes", "drafted", "accepted"):
            setattr(totals, name, getattr(totals, name) + getattr(got[3], name))
    assert 0 < totals.accepted < totals.drafted  # drafts were both kept and dropped


def test_chat_module_speculates_with_identical_answers(tiny_builds, monkeypatch):
    """Through `ChatModule`: drafts from an oracle (some kept) and from prompt lookup (down to
    one-token matches: the tiny random model seldom repeats two) give plain decoding's answer,
    and the next turn goes on from the same KV cache."""
    _, built = tiny_builds.get("gqa", **GQA)
    chat = ChatModule(built, prefix_cache=False)
    prompt = " ".join(["alpha beta gamma delta"] * 6)

    def answer(method, drafter=None):
        if drafter is not None:
            monkeypatch.setattr(chat_module, "drafter_for", lambda name, draft=None: drafter)
        chat.reset_chat()
        config = GenerationConfig(temperature=0, max_tokens=48, speculative=method)
        text, ids, stats = chat.generate(prompt, config), chat.last_output_ids, chat.last_stats
        follow_up = chat.generate("again", GenerationConfig(temperature=0, max_tokens=8))
        return (text, ids, follow_up), stats

    want, _ = answer(None)
    chat.reset_chat()
    chat.generate(prompt, GenerationConfig(temperature=0, max_tokens=48))
    answer_ids = chat.last_output_ids
    prompt_ids = chat.history_ids[: len(chat.history_ids) - len(answer_ids) + 1]
    got, stats = answer("prompt-lookup", NoisyOracle(prompt_ids, answer_ids, seed=3))
    assert got == want
    assert 0 < stats.accepted_draft_tokens < stats.draft_tokens
    got, stats = answer("prompt-lookup", PromptLookup(min_ngram=1))
    assert got == want and stats.draft_tokens > 0


class BatchOracle:
    """Guesses each sequence's known answer (found by its prompt), with wrong tokens."""

    def __init__(self, answers: dict[tuple, list[int]], seed: int):
        self.texts = [[*prompt, *answer] for prompt, answer in answers.items()]
        self.rng = np.random.default_rng(seed)

    def propose(self, context: list[int], max_tokens: int) -> list[int]:
        (text,) = [t for t in self.texts if t[: len(context)] == context]
        guess = text[len(context) : len(context) + int(self.rng.integers(0, max_tokens + 1))]
        return [t if self.rng.random() < 0.85 else int(self.rng.integers(3, 320)) for t in guess]


@pytest.mark.parametrize("code", ["q0f32", "q4a8_1"])
def test_batched_speculation_keeps_every_answer_and_logprob(tiny_builds, code, monkeypatch):
    """The batching engine verifying drafts for every sequence in one pass, over random mixes
    of prompts, answer lengths and arrivals (as in test_batch_engine's batch-invariance test):
    each sequence's tokens and logprobs equal its solo run's, bit for bit."""
    _, built = tiny_builds.get("gqa", code, **GQA)
    tokenizer = Tokenizer.from_file(str(built / "tokenizer.json"))
    eos = CompiledModel(built).chat_config.eos_token_ids[0]
    rng = np.random.default_rng(11)
    for mix in range(2):
        chunk = int(rng.integers(12, 49))  # the step's chains share it
        model = CompiledModel(
            built, max_batch_size=9, kv_cache_tokens=1024, prefill_chunk_size=chunk
        )
        solo = CompiledModel(built, prefill_chunk_size=chunk)
        prompts = [rng.integers(3, 320, size=n).tolist() for n in rng.integers(2, 41, size=12)]
        max_tokens = rng.integers(1, 30, size=12).tolist()
        want = [greedy_solo(solo, p, n, eos) for p, n in zip(prompts, max_tokens, strict=True)]
        oracle = BatchOracle({tuple(p): w[0] for p, w in zip(prompts, want, strict=True)}, mix)
        monkeypatch.setattr(batch_engine, "drafter_for", lambda name, o=oracle: o)
        engine = BatchEngine(model, speculative="prompt-lookup", num_draft_tokens=6)
        configs = [GenerationConfig(temperature=0, max_tokens=n).resolved({}) for n in max_tokens]
        delays = rng.uniform(0, 0.004, size=len(prompts))
        logprobs: list[list[float]] = [[] for _ in prompts]
        results = run_engine(engine, tokenizer, prompts, configs, {eos}, delays, logprobs)
        stats = engine.stats()
        engine.shutdown()
        for i, (tokens, lps) in enumerate(want):
            assert results[i] == tokens and logprobs[i] == lps, (code, mix, i)
        assert 0 < stats.accepted_draft_tokens < stats.draft_tokens, stats
        assert stats.speculative_passes > 0


def test_engine_refuses_speculation_a_model_cannot_do(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    model = CompiledModel(built, max_batch_size=2)
    with pytest.raises(ValueError, match="unknown speculative method 'medusa'"):
        BatchEngine(model, speculative="medusa")
    model.no_chains = "its sliding-window layers cannot attend to a chain"  # as built
    with pytest.raises(ValueError, match="cannot decode speculatively .*sliding.*--speculative"):
        BatchEngine(model, speculative="prompt-lookup")


def test_a_draft_model_speculates_with_identical_answers(tiny_builds):
    """The `q4a8_1` build of the same tiny model drafts for the `q0f32` one: the answers, over
    two turns and a new conversation, equal plain decoding's."""
    _, target = tiny_builds.get("gqa", **GQA)
    _, draft = tiny_builds.get("gqa", "q4a8_1", **GQA)
    chat = ChatModule(target, draft_model=draft)
    prompts = ["tell me a story about the sea", "and then?", "a new conversation"]

    def run(method):
        outputs, drafted, accepted = [], 0, 0
        chat.reset_chat()
        for i, prompt in enumerate(prompts):
            if i == 2:
                chat.reset_chat()
            config = GenerationConfig(temperature=0, max_tokens=40, speculative=method)
            outputs.append((chat.generate(prompt, config), chat.last_output_ids))
            drafted += chat.last_stats.draft_tokens
            accepted += chat.last_stats.accepted_draft_tokens
        return outputs, drafted, accepted

    want, _, _ = run(None)
    got, drafted, accepted = run("draft-model")
    assert got == want
    assert 0 < accepted < drafted  # a random tiny model's logits are close: 20 % kept


def test_a_draft_model_needs_the_same_tokenizer(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    model = CompiledModel(built)
    with pytest.raises(ValueError, match="another tokenizer"):
        DraftModel(model, {"a": 0, "b": 1}, {"a": 0, "c": 1})
    chat = ChatModule(built)
    with pytest.raises(ValueError, match="needs a draft model: ChatModule"):
        chat.generate("hi", GenerationConfig(speculative="draft-model"))
    with pytest.raises(ValueError, match="prompt-lookup only"):
        BatchEngine(CompiledModel(built, max_batch_size=2), speculative="draft-model")


def test_prompt_lookup_guesses_what_followed_the_latest_match():
    lookup = PromptLookup(max_ngram=3, min_ngram=1)
    assert lookup.propose([1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3], 3) == [7, 8, 5]
    assert lookup.propose([1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3], 1) == [7]
    assert lookup.propose([4, 5, 6, 4, 5], 8) == [6, 4, 5]  # 2-gram, up to the end
    assert lookup.propose([4, 6, 9, 6], 2) == [9, 6]  # 1-gram
    assert PromptLookup(min_ngram=2).propose([4, 6, 9, 6], 2) == []
    assert lookup.propose([1, 2, 3], 4) == [] and lookup.propose([7], 4) == []
    assert lookup.propose([1, 2, 1, 2], 0) == []
    with pytest.raises(ValueError, match="n-gram"):
        PromptLookup(max_ngram=1, min_ngram=2)


def test_speculative_settings_are_checked(tiny_builds):
    with pytest.raises(ValueError, match="speculative must be one of prompt-lookup"):
        GenerationConfig(speculative="medusa").resolved({})
    with pytest.raises(ValueError, match="num_draft_tokens"):
        GenerationConfig(speculative="prompt-lookup", num_draft_tokens=0).resolved({})
    _, built = tiny_builds.get("gqa", **GQA)
    chat = ChatModule(built)
    chat.engine.no_chains = "its sliding-window layers cannot attend to a chain"  # as built
    with pytest.raises(ValueError, match="speculative decoding cannot run on .*sliding"):
        chat.generate("hi", GenerationConfig(speculative="prompt-lookup"))


# --- sampling keeps its distribution ------------------------------------------------------

DRAWS = 6000


def _exact_answers(model, prompt, temperature, top_k, length) -> dict[tuple, float]:
    """P(each answer of `length` tokens) from decode steps, by transformers' processors in
    float64."""
    import torch

    def probs(logits):
        scores = torch.tensor(logits, dtype=torch.float64)[None]
        scores = TopKLogitsWarper(top_k)(None, TemperatureLogitsWarper(temperature)(None, scores))
        return torch.softmax(scores, -1)[0].numpy()

    answers = {(): 1.0}
    for _ in range(length):
        longer = {}
        for answer, p in answers.items():
            model.reset()
            logits = model.prefill([*prompt, *answer])
            for token, q in enumerate(probs(logits)):
                if q > 0:
                    longer[(*answer, token)] = p * q
        answers = longer
    return answers


def test_sampled_answers_keep_their_distribution(tiny_builds):
    """Three-token answers at temperature 1 and top-k 3, with a drafter that always guesses
    the likeliest answer's tokens (so a pass keeps its draft, or draws another token in its
    place): frequencies of the first two tokens (the draft's place) and of all three against
    the exact probabilities, by the chi-square test of tests/test_sampling_distribution.py.
    The control, the same draws at temperature 1.6, must fail the same check; so does a
    sampler that draws a second time after a rejection, 30 % of the time (tried by hand)."""
    _, built = tiny_builds.get("gqa", **GQA)
    tokenizer = Tokenizer.from_file(str(built / "tokenizer.json"))
    model = CompiledModel(built)
    prompt = [11, 42, 97, 13]
    exact = _exact_answers(model, prompt, 1.0, 3, 3)
    likeliest = max(exact, key=exact.get)

    class Likeliest:
        def propose(self, context, max_tokens):
            return list(likeliest[len(context) - len(prompt) :][:max_tokens])

    def draw(temperature: float, draws: int) -> tuple[dict, SpeculationStats]:
        counts: dict[tuple, int] = {}
        stats = SpeculationStats()
        for seed in range(draws):
            config = GenerationConfig(
                temperature=temperature, top_k=3, top_p=1.0, max_tokens=3, seed=seed
            ).resolved({})
            model.reset()
            logits = model.prefill(prompt)
            step = GenerationStep(tokenizer, config, prompt, len(prompt), 512)
            list(decode_steps(model, step, logits, list(prompt), Likeliest(), 4, stats))
            counts[tuple(step.generated)] = counts.get(tuple(step.generated), 0) + 1
        return counts, stats

    def passes(counts: dict, length: int) -> bool:
        """The check on the answers' first `length` tokens."""
        exact_prefix: dict[tuple, float] = {}
        for answer, p in exact.items():
            exact_prefix[answer[:length]] = exact_prefix.get(answer[:length], 0.0) + p
        outcomes = sorted(exact_prefix)
        observed = np.zeros(len(outcomes) + 1, dtype=np.int64)  # the last: impossible ones
        for answer, n in counts.items():
            key = answer[:length]
            observed[outcomes.index(key) if key in exact_prefix else -1] += n
        probs = np.array([exact_prefix[o] for o in outcomes] + [0.0])
        return chi_square(observed, probs).passed

    counts, stats = draw(1.0, DRAWS)
    assert 0 < stats.accepted < stats.drafted
    assert passes(counts, 2) and passes(counts, 3), counts
    control, _ = draw(1.6, DRAWS // 4)
    assert not passes(control, 2) and not passes(control, 3)
