"""Speculative decoding: draft tokens cheaply, verify them all in one forward pass.

A drafter guesses the next tokens; the model is fed the token to feed and the guesses as one
chain (`CompiledModel.feed_chain`), whose logits are, row by row, bit for bit those that decode
steps would give. The generation step then runs on each row in turn, exactly as it would on
decode's logits, and the guesses are kept while each step picks the guess that follows it: the
first step that picks another token (or ends the answer) gives the last token of this pass,
and the KV cache keeps only what was fed before it.

So greedy answers are identical to plain decoding's, token for token. A sampled answer is
drawn from the same distribution: a drafter's guess is one token (a point mass), and drawing
from the model's distribution and keeping the guess when the draw equals it is rejection
sampling for such a proposal (the guess is kept with probability p(guess); otherwise the token
drawn is distributed as p without the guess, renormalised).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from .compiled_model import CompiledModel
from .generation import GenerationStep, StepOutput
from .generation_config import SPECULATIVE_METHODS

MIN_BUDGET = 2  # the fewest drafts a pass asks for after one that dropped some


@dataclasses.dataclass
class SpeculationStats:
    passes: int = 0  # forward passes that verified drafts
    drafted: int = 0  # draft tokens fed
    accepted: int = 0  # draft tokens that joined the answer


class PromptLookup:
    """Prompt-lookup drafting (n-gram matching, no draft model): find the latest earlier
    occurrence of the context's last `n` tokens, for n from `max_ngram` down to `min_ngram`,
    and guess the tokens that followed it."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 2):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"n-gram sizes must satisfy 1 <= {min_ngram} <= {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, context: Sequence[int], max_tokens: int) -> list[int]:
        ids = np.asarray(context, dtype=np.int64)
        if max_tokens <= 0:
            return []
        for n in range(min(self.max_ngram, ids.size - 1), self.min_ngram - 1, -1):
            pattern = ids[-n:]
            # Windows that start early enough to be followed by at least one token.
            windows = np.lib.stride_tricks.sliding_window_view(ids[:-1], n)
            hits = np.flatnonzero((windows == pattern).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + n
                return ids[start : start + max_tokens].tolist()
        return []


class DraftModel:
    """Draft-model speculation: a smaller build with the same vocabulary guesses greedily. Its
    KV cache keeps the context it last saw; the next guess feeds only what changed since."""

    def __init__(self, model: CompiledModel, target_vocabulary: dict[str, int], vocabulary):
        if vocabulary != target_vocabulary:
            raise ValueError(
                f"the draft model {model.model_dir.name} has another tokenizer than the model "
                "it drafts for (their vocabularies differ): use a build of the same tokenizer"
            )
        self.model = model
        self.held: list[int] = []  # the tokens in the draft model's KV cache

    def propose(self, context: Sequence[int], max_tokens: int) -> list[int]:
        room = self.model.context_window_size - len(context) - max_tokens
        if max_tokens <= 0 or room < 0:
            return []
        same = min(_common_length(self.held, context), len(context) - 1)
        self.model.pop(len(self.held) - same)
        new = list(context[same:])
        logits = self.model.decode(new[0]) if len(new) == 1 else self.model.prefill(new)
        self.held = list(context)
        drafts = [int(np.argmax(logits))]
        while len(drafts) < max_tokens:
            logits = self.model.decode(drafts[-1])
            self.held.append(drafts[-1])
            drafts.append(int(np.argmax(logits)))
        return drafts


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def drafter_for(method: str, draft_model: DraftModel | None = None) -> PromptLookup | DraftModel:
    """The drafter `method` names (`draft-model`: `draft_model`, which must be given)."""
    if method == "prompt-lookup":
        return PromptLookup()
    if method == "draft-model":
        if draft_model is None:
            raise ValueError(
                "speculative='draft-model' needs a draft model: ChatModule(..., "
                "draft_model=DIR) or --draft-model DIR, a smaller build with the same tokenizer"
            )
        return draft_model
    raise ValueError(
        f"unknown speculative method {method!r}; choose one of {', '.join(SPECULATIVE_METHODS)}"
    )


def decode_steps(
    engine: CompiledModel,
    step: GenerationStep,
    logits: np.ndarray,
    history: list[int],
    drafter: PromptLookup | DraftModel | None = None,
    max_draft: int = 0,
    stats: SpeculationStats | None = None,
) -> Iterator[StepOutput]:
    """Run `step` from the logits of the last fed token to the end of the answer, feeding the
    engine; yields each step's output. `history` (the tokens in the KV cache) grows with what
    is fed. With a drafter, up to `max_draft` guesses are verified with each fed token."""
    out = step.step(logits)
    budget = max_draft  # drafts per pass: see `next_budget`
    while out is not None:
        yield out
        if out.finish_reason is not None:
            return
        feed = out.to_feed
        drafts = _drafts(engine, step, feed, history, drafter, budget)
        if not drafts:
            history.extend(feed)
            out = step.step(_feed(engine, feed))
            continue
        chain = [*feed, *drafts]
        rows = engine.feed_chain(chain)
        kept = len(feed)
        accepted = []
        for draft in drafts:
            out = step.step(rows[kept - 1])
            if out is None or out.finish_reason is not None or out.to_feed != [draft]:
                break
            accepted.append(out)
            kept += 1
        else:
            out = step.step(rows[kept - 1])  # every draft kept: the token after the last
        engine.keep_chain(kept)
        history.extend(chain[:kept])
        budget = next_budget(budget, len(drafts), len(accepted), max_draft)
        if stats is not None:
            stats.passes += 1
            stats.drafted += len(drafts)
            stats.accepted += len(accepted)
        yield from accepted


def next_budget(budget: int, drafted: int, accepted: int, max_draft: int) -> int:
    """Drafts for the next pass: twice as many after a pass that kept all its drafts, one
    more than it kept after one that dropped some (each draft costs a token's compute)."""
    if accepted == drafted:
        return min(max_draft, max(budget, 2 * drafted))
    return max(MIN_BUDGET, min(budget, accepted + 1))


def _drafts(
    engine: CompiledModel,
    step: GenerationStep,
    feed: list[int],
    history: list[int],
    drafter: PromptLookup | DraftModel | None,
    max_draft: int,
) -> list[int]:
    """Guesses to verify after `feed`: none past the answer's `max_tokens` or the chain the
    engine can take."""
    if drafter is None:
        return []
    room = draft_room(step, max_draft, engine.max_chain_length() - len(feed))
    return drafter.propose([*history, *feed], room) if room > 0 else []


def draft_room(step: GenerationStep, budget: int, chain_room: int) -> int:
    """How many guesses a pass may verify after the tokens it feeds: at most `budget` and
    `chain_room` (what the chain can still take), none past the answer's `max_tokens`."""
    return min(budget, step.config.max_tokens - len(step.generated) - 1, chain_room)


def _feed(engine: CompiledModel, tokens: list[int]) -> np.ndarray:
    """Feed tokens as decode steps would (in one pass where the build can); the last one's
    logits."""
    if len(tokens) == 1:
        return engine.decode(tokens[0])
    if 1 < len(tokens) <= engine.max_chain_length():
        rows = engine.feed_chain(tokens)
        engine.keep_chain(len(tokens))
        return rows[-1]
    return engine.prefill(tokens)
