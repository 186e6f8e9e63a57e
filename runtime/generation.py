"""The generation step: logits in, the next token, its streamed text and whether to stop, out.

One `GenerationStep` follows one answer. `ChatModule` and the batching engine's `Sequence`
feed it the logits of each forward pass; the chat page's `session.js` ports the same rules to
JavaScript. The rules, in order, for each step:

1. `max_tokens` already reached (only when it is 0): finish with "length", sample nothing.
2. Sample a token (under a grammar, only among the tokens it allows; then logit bias, penalties
   over the context and the answer, and the sampler settings).
3. A stop token: finish with "stop"; the token is not part of the answer.
4. Append the token and stream its text, held back while it could begin a stop string; a
   completed stop string, or a grammar that has ended: finish with "stop", the text cut before
   a stop string.
5. `interrupt()` called: "interrupted"; `max_tokens` reached, or the KV cache full (the
   token could not be fed): "length". Otherwise the token is to be fed next.
6. With `jump_forward`, the tokens the grammar forces next are appended too, each by rules 4
   and 5, and fed with the sampled one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
from tokenizers import Tokenizer

from .generation_config import GenerationConfig
from .grammar import TokenConstraint
from .sampling import sample
from .streamer import StopStringFilter, TextStreamer


@dataclasses.dataclass
class StepOutput:
    sampled: int  # the token drawn from the logits (a stop token too)
    appended: bool = False  # whether it joined the answer (a stop token does not)
    forced: list[int] = dataclasses.field(default_factory=list)  # appended after it (rule 6)
    text: str = ""  # new text to stream
    finish_reason: str | None = None  # "stop", "length", "interrupted" or None: go on

    @property
    def to_feed(self) -> list[int]:
        """The tokens the model reads next: the sampled one (if it joined) and the forced."""
        return [self.sampled, *self.forced] if self.appended else []


class GenerationStep:
    """The per-token rules of one answer (see the module docstring).

    `context_ids` are the tokens the model has seen before the answer (the repetition
    penalty covers them) and `kv_tokens` how many of them the KV cache holds. `constraint` is
    the answer's grammar state, started for the same stop tokens.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        config: GenerationConfig,
        context_ids: Iterable[int],
        kv_tokens: int,
        context_window_size: int,
        stop_token_ids: Iterable[int] = (),
        stop_strings: Iterable[str] = (),
        constraint: TokenConstraint | None = None,
        jump_forward: bool = False,
    ):
        self.config = config
        self.constraint = constraint
        self.jump_forward = jump_forward
        self.context_ids = list(context_ids)
        self.kv_tokens = kv_tokens
        self.context_window_size = context_window_size
        self.stop_token_ids = set(stop_token_ids) | set(config.stop_token_ids or ())
        self.rng = np.random.default_rng(config.seed)
        self.streamer = TextStreamer(tokenizer)
        self.stop_filter = StopStringFilter([*(config.stop or ()), *stop_strings])
        self.generated: list[int] = []
        self.finish_reason: str | None = None
        self._interrupted = False

    def interrupt(self) -> None:
        """End the answer after the current token (safe from a signal handler)."""
        self._interrupted = True

    def step(self, logits: np.ndarray) -> StepOutput | None:
        """Apply the rules to the logits of the last fed token; None when rule 1 ends the
        answer before any sampling."""
        if self.finish_reason is not None:
            raise RuntimeError("the answer has finished; start a new GenerationStep")
        if len(self.generated) >= self.config.max_tokens:
            self._finish("length")
            return None
        history = [*self.context_ids, *self.generated]
        if self.constraint is not None:
            logits = self.constraint.mask(logits)
        token = sample(logits, self.config, self.rng, history, self.generated)
        if self.constraint is not None:
            self.constraint.accept(token)
        out = StepOutput(token)
        if token in self.stop_token_ids:
            out.text, out.finish_reason = self._finish("stop"), "stop"
            return out
        out.appended = True
        self._append(token, out)
        if self.jump_forward and self.constraint is not None and out.finish_reason is None:
            for forced in self.constraint.forced_tokens():
                self.constraint.accept(forced)
                out.forced.append(forced)
                self._append(forced, out)
                if out.finish_reason is not None:
                    break
        return out

    def _append(self, token: int, out: StepOutput) -> None:
        """Rules 4 and 5 for one token joining the answer."""
        self.generated.append(token)
        out.text += self.stop_filter.put(self.streamer.put(token))
        reason = None
        if self.stop_filter.stopped:
            reason = "stop"
        elif self.constraint is not None and self.constraint.finished:
            reason = "stop"  # the grammar ended without a stop token (none was allowed)
        elif self._interrupted:
            reason = "interrupted"
        elif len(self.generated) >= self.config.max_tokens:
            reason = "length"
        elif self.kv_tokens + len(self.generated) - 1 >= self.context_window_size:
            reason = "length"  # no room in the KV cache to feed this token
        if reason is not None:
            out.text += self._finish(reason)
            out.finish_reason = reason

    def _finish(self, reason: str) -> str:
        """End the answer; the text still held back."""
        self.finish_reason = reason
        return self.stop_filter.put(self.streamer.finish()) + self.stop_filter.finish()
