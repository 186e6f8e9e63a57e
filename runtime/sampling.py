"""Next-token sampling on the CPU: logit bias, penalties, then temperature, top-k, top-p and
min-p in `transformers`' order (`tests/test_sampling_distribution.py` checks the sampled
frequencies against its logits processors)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from .generation_config import GenerationConfig


def apply_penalties(
    logits: np.ndarray,
    config: GenerationConfig,
    context_ids: Sequence[int],
    generated_ids: Sequence[int],
) -> np.ndarray:
    """Repetition penalty (transformers' rule) over the whole context; presence and frequency
    penalties (OpenAI's rule) over the generated tokens."""
    if config.repetition_penalty != 1.0 and context_ids:
        ids = np.unique(np.asarray(context_ids, dtype=np.int64))
        seen = logits[ids]
        logits[ids] = np.where(
            seen > 0, seen / config.repetition_penalty, seen * config.repetition_penalty
        )
    if (config.presence_penalty or config.frequency_penalty) and generated_ids:
        counts = Counter(generated_ids)
        ids = np.fromiter(counts, dtype=np.int64)
        freq = np.fromiter(counts.values(), dtype=np.float32)
        logits[ids] -= config.frequency_penalty * freq + config.presence_penalty
    return logits


def sample(
    logits: np.ndarray,
    config: GenerationConfig,
    rng: np.random.Generator,
    context_ids: Sequence[int] = (),
    generated_ids: Sequence[int] = (),
) -> int:
    logits = logits.astype(np.float32, copy=True)
    if config.logit_bias:
        ids = np.fromiter(config.logit_bias, dtype=np.int64)
        logits[ids] += np.fromiter(config.logit_bias.values(), dtype=np.float32)
    logits = apply_penalties(logits, config, context_ids, generated_ids)
    if config.temperature == 0:
        return int(np.argmax(logits))
    # Shift first: any temperature > 0, however small, then gives finite logits <= 0.
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        logits = (logits - logits.max()).astype(np.float64) / config.temperature
    if config.top_k and config.top_k < logits.size:
        kth = np.partition(logits, -config.top_k)[-config.top_k]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if config.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        cut = int(np.searchsorted(cumulative, config.top_p * cumulative[-1])) + 1
        keep = np.zeros_like(probs, dtype=bool)
        keep[order[:cut]] = True
        probs = np.where(keep, probs, 0.0)
    if config.min_p:  # relative to the most likely token, which top-p always keeps
        probs = np.where(probs < config.min_p * probs.max(), 0.0, probs)
    probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))
