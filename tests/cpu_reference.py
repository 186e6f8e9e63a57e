"""The CPU build as the reference of the GPU and web targets' whole-model tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlc.runtime.compiled_model import CompiledModel


def cpu_logits_along(model_dir: Path, prompt: list[int], tokens: list[int]) -> list[np.ndarray]:
    """The CPU build's next-token logits after `prompt` and after each of `tokens[:-1]`."""
    model = CompiledModel(model_dir)
    steps = [model.prefill(prompt).copy()]
    steps += [model.decode(token).copy() for token in tokens[:-1]]
    return steps


def assert_greedy_along(tokens: list[int], expected: list[np.ndarray], tolerance: float) -> None:
    """Each of a device's greedy `tokens` is the CPU build's argmax, or ties with it within
    `tolerance` (fp16 rounding can flip a near tie; a wrong kernel cannot hide there, as the
    callers' logit checks show), and all but at most two are exact argmaxes."""
    for step, (token, logits) in enumerate(zip(tokens, expected, strict=True)):
        best = int(np.argmax(logits))
        margin = float(logits[best] - logits[token])
        assert token == best or margin <= tolerance, (step, token, best, margin)
    exact = sum(token == int(np.argmax(lg)) for token, lg in zip(tokens, expected, strict=True))
    assert exact >= len(tokens) - 2, f"only {exact} of {len(tokens)} tokens are exact argmaxes"
