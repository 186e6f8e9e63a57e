"""The sampler draws from the right distribution: frequencies of many draws from fixed logits
against the exact target, computed by `transformers`' logits processors in float64 (the
OpenAI API's formula for presence and frequency penalties and logit bias, which `transformers`
lacks).

Each case draws `DRAWS` tokens and runs Pearson's chi-square test at significance `ALPHA`
(tokens of expected count under 5 pooled); a token the target gives probability 0 must never be
drawn. `test_the_check_rejects_a_sampler_that_ignores_a_setting` shows the same check fails a
sampler that drops each setting.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from mlc import GenerationConfig
from mlc.runtime.sampling import sample

DRAWS = 20_000
ALPHA = 1e-4  # the chance that a correct sampler fails one case
Z_ALPHA = 3.719  # the standard normal's upper 1e-4 quantile

LOGITS = np.array(
    [2.0, 1.7, 1.1, 0.9, 0.3, 0.0, -0.4, -0.9, -1.5, -2.2, -3.0, 0.55], dtype=np.float32
)
CONTEXT = [0, 3, 5]  # tokens before the answer (repetition penalty)
ANSWER = [1, 1, 4, 5]  # tokens already generated (all penalties)

PLAIN = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
CASES = {
    "temperature 0.6": dict(PLAIN, temperature=0.6),
    "temperature 1.7": dict(PLAIN, temperature=1.7),
    "top_k 4": dict(PLAIN, top_k=4),
    "top_p 0.8": dict(PLAIN, top_p=0.8),
    "min_p 0.15": dict(PLAIN, min_p=0.15),
    "all at once": dict(temperature=0.8, top_k=9, top_p=0.9, min_p=0.05, repetition_penalty=1.0),
    # min-p before top-p would keep only the first three tokens, not four.
    "top_p, then min_p": dict(PLAIN, top_p=0.75, min_p=0.3),
    "repetition_penalty 1.5": dict(PLAIN, repetition_penalty=1.5),
    "presence and frequency": dict(PLAIN, presence_penalty=0.7, frequency_penalty=0.4),
    "logit_bias": dict(PLAIN, logit_bias={2: 1.5, 0: -100.0}),
}


def config(**settings) -> GenerationConfig:
    return GenerationConfig(**settings).resolved({})


def target(settings: dict) -> np.ndarray:
    """The exact next-token distribution for `settings`."""
    c = config(**settings)
    logits = torch.tensor(LOGITS, dtype=torch.float64)
    for token, bias in (c.logit_bias or {}).items():
        logits[token] += bias
    ids = torch.tensor([[*CONTEXT, *ANSWER]])
    scores = logits[None]
    if c.repetition_penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(c.repetition_penalty)(ids, scores)
    counts = np.bincount(ANSWER, minlength=LOGITS.size)
    penalty = c.frequency_penalty * counts + c.presence_penalty * (counts > 0)
    scores = scores - torch.tensor(penalty, dtype=torch.float64)
    warpers = [TemperatureLogitsWarper(c.temperature)]
    if c.top_k:
        warpers.append(TopKLogitsWarper(c.top_k))
    if c.top_p < 1.0:
        warpers.append(TopPLogitsWarper(c.top_p))
    if c.min_p:
        warpers.append(MinPLogitsWarper(c.min_p))
    for warper in warpers:
        scores = warper(ids, scores)
    return torch.softmax(scores, dim=-1)[0].numpy()


def draw(settings: dict, seed: int = 0) -> np.ndarray:
    """Token counts of `DRAWS` samples."""
    c = config(**settings)
    rng = np.random.default_rng(seed)
    tokens = [sample(LOGITS, c, rng, [*CONTEXT, *ANSWER], ANSWER) for _ in range(DRAWS)]
    return np.bincount(tokens, minlength=LOGITS.size)


@dataclasses.dataclass
class Verdict:
    statistic: float
    critical: float
    impossible_draws: int  # draws of tokens the target never gives

    @property
    def passed(self) -> bool:
        return self.statistic <= self.critical and self.impossible_draws == 0


def chi_square(counts: np.ndarray, probs: np.ndarray) -> Verdict:
    expected = probs * counts.sum()
    possible = probs > 0
    big = possible & (expected >= 5)
    observed = list(counts[big])
    wanted = list(expected[big])
    small = possible & ~big
    if small.any():  # pooled into one category
        observed.append(counts[small].sum())
        wanted.append(expected[small].sum())
    observed, wanted = np.array(observed, float), np.array(wanted, float)
    statistic = float(((observed - wanted) ** 2 / wanted).sum())
    k = len(wanted) - 1  # degrees of freedom
    # Wilson-Hilferty: the chi-square quantile from the normal one (error < 1 % for k >= 2).
    critical = k * (1 - 2 / (9 * k) + Z_ALPHA * math.sqrt(2 / (9 * k))) ** 3 if k else 0.0
    return Verdict(statistic, critical, int(counts[~possible].sum()))


@pytest.mark.parametrize("name", CASES)
def test_sampled_frequencies_match_the_target_distribution(name):
    settings = CASES[name]
    probs = target(settings)
    verdict = chi_square(draw(settings), probs)
    assert verdict.passed, (name, verdict, probs)


# Each setting dropped in turn: a sampler that ignores it draws from `PLAIN`'s distribution.
IGNORED = [
    "temperature 0.6",
    "top_k 4",
    "top_p 0.8",
    "min_p 0.15",
    "repetition_penalty 1.5",
    "presence and frequency",
    "logit_bias",
]


@pytest.mark.parametrize("name", IGNORED)
def test_the_check_rejects_a_sampler_that_ignores_a_setting(name):
    verdict = chi_square(draw(PLAIN, seed=1), target(CASES[name]))
    assert not verdict.passed, (name, verdict)


def test_the_check_rejects_min_p_applied_before_top_p():
    """min-p first (relative to the same maximum), then top-p over what is left."""
    probs = target(PLAIN)
    probs = np.where(probs < 0.3 * probs.max(), 0.0, probs)
    order = np.argsort(-probs, kind="stable")
    cut = int(np.searchsorted(np.cumsum(probs[order]), 0.75 * probs.sum())) + 1
    swapped = np.zeros_like(probs)
    swapped[order[:cut]] = probs[order[:cut]]
    swapped /= swapped.sum()
    counts = np.random.default_rng(2).multinomial(DRAWS, swapped)
    assert not chi_square(counts, target(CASES["top_p, then min_p"])).passed


def test_greedy_takes_the_first_maximum_after_bias_and_penalties():
    tied = np.array([0.5, 3.0, 3.0, 1.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert sample(tied, config(temperature=0), rng) == 1
    assert sample(tied, config(temperature=0, logit_bias={2: 0.1}), rng) == 2
    assert sample(tied, config(temperature=0, presence_penalty=1.0), rng, [1], [1]) == 2


def test_a_seeded_generator_repeats_and_others_differ():
    settings = dict(PLAIN, temperature=1.5)
    assert (draw(settings, seed=7) == draw(settings, seed=7)).all()
    assert (draw(settings, seed=7) != draw(settings, seed=8)).any()
