"""One generation request inside the batching engine: its prompt, its KV-cache bookkeeping and
its outputs. The engine feeds it logits; the per-token rules are `GenerationStep`'s, the same
as `ChatModule`'s for a single conversation.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import numpy as np
from tokenizers import Tokenizer

from .generation import GenerationStep
from .generation_config import GenerationConfig
from .grammar import TokenConstraint

_ids = itertools.count(1)  # sequence 0 is CompiledModel's own single sequence


@dataclasses.dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # the most likely alternatives, best first


@dataclasses.dataclass
class SequenceOutput:
    """What one engine step produced for a sequence. The first output of every sequence is an
    empty one sent when it is admitted to the running batch (or fails before that)."""

    text: str = ""
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[TokenLogprob] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None  # "stop", "length", "abort" or "error"
    error: str | None = None
    error_kind: str | None = None  # "overloaded" (retry later) or "internal"


OutputCallback = Callable[[SequenceOutput], None]


class Sequence:
    """A request's generation state; all methods run on the engine thread."""

    def __init__(
        self,
        prompt_ids: list[int],
        config: GenerationConfig,
        tokenizer: Tokenizer,
        stop_token_ids: set[int],
        stop_strings: list[str],
        on_output: OutputCallback,
        context_window_size: int,
        top_logprobs: int | None = None,
        constraint: TokenConstraint | None = None,
    ):
        self.seq_id = next(_ids)
        self.prompt_ids = list(prompt_ids)
        self.config = config
        self.on_output = on_output
        self.top_logprobs = top_logprobs  # None: no logprobs
        self.generation = GenerationStep(
            tokenizer,
            config,
            context_ids=self.prompt_ids,
            kv_tokens=len(self.prompt_ids),
            context_window_size=context_window_size,
            stop_token_ids=stop_token_ids,
            stop_strings=stop_strings,
            constraint=constraint,
            # Forced tokens are fed by a prefill step; their logprobs would be unknown.
            jump_forward=top_logprobs is None,
        )
        # Tokens for prefill steps: the prompt, then spans a grammar forced (jump-forward).
        self.feed_ids = list(self.prompt_ids)
        self.num_prefilled = 0  # of `feed_ids`, already in the KV cache
        self.num_reused = 0  # of those, taken from a cached prefix
        self.pending_token: int | None = None  # sampled, to be fed by the next decode step
        self.finish_reason: str | None = None
        self.cancelled = False
        # Tokens this sequence may hold in the KV cache at most.
        self.max_kv_tokens = min(len(prompt_ids) + config.max_tokens, context_window_size)
        self.draft_budget = 0  # speculative guesses per pass (set by the engine)

    @property
    def generated(self) -> list[int]:
        return self.generation.generated

    @property
    def prefill_done(self) -> bool:
        return self.num_prefilled == len(self.feed_ids)

    def append_logits(self, logits: np.ndarray) -> None:
        """Take one generation step on `logits` and send what it produced."""
        step = self.generation.step(logits)
        out = SequenceOutput()
        if step is not None:
            out.text = step.text
            if self.top_logprobs is not None:
                out.logprobs.append(_logprob(logits, step.sampled, self.top_logprobs))
            if step.appended:
                out.token_ids += [step.sampled, *step.forced]
        if self.generation.finish_reason is not None:
            out.finish_reason = self.finish_reason = self.generation.finish_reason
            self.pending_token = None
        else:
            assert step is not None
            if step.forced:  # fed together by the next prefill step
                self.feed_ids += step.to_feed
                self.pending_token = None
            else:
                self.pending_token = step.sampled
        self.on_output(out)

    def append_chain(self, rows: np.ndarray, drafts: list[int]) -> int:
        """Take generation steps on a chain's rows (the pending token's, then each draft's)
        while each picks the draft that follows; returns how many chain tokens to keep (the
        pending token and the drafts picked). The last step's token is pending, as after a
        decode step."""
        kept = 1
        for i, row in enumerate(rows):
            self.append_logits(row)
            if i == len(drafts) or self.pending_token != drafts[i]:
                break
            kept += 1
        return kept

    def fail(self, reason: str, message: str, kind: str) -> None:
        """End the sequence without more text (cancelled, overloaded, engine error)."""
        self.finish_reason = reason
        self.pending_token = None
        self.on_output(SequenceOutput(finish_reason=reason, error=message, error_kind=kind))


def _logprob(logits: np.ndarray, token: int, num_top: int) -> TokenLogprob:
    """Log-probabilities under the model's own distribution (before sampling settings)."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max()
    logprobs = shifted - np.log(np.exp(shifted).sum())
    top: list[tuple[int, float]] = []
    if num_top:
        best = np.argpartition(-logprobs, num_top - 1)[:num_top]
        best = best[np.argsort(-logprobs[best], kind="stable")]
        top = [(int(i), float(logprobs[i])) for i in best]
    return TokenLogprob(token, float(logprobs[token]), top)
