"""One generation request inside the batching engine: its prompt, sampler, stop rules and text.

The engine feeds it logits; it samples the next token, detokenizes and decides when to stop,
exactly as `ChatModule` does for a single conversation.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import numpy as np
from tokenizers import Tokenizer

from .generation_config import GenerationConfig
from .sampling import sample
from .streamer import StopStringFilter, TextStreamer

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
    ):
        self.seq_id = next(_ids)
        self.prompt_ids = list(prompt_ids)
        self.config = config
        self.on_output = on_output
        self.top_logprobs = top_logprobs  # None: no logprobs
        self.stop_token_ids = stop_token_ids | set(config.stop_token_ids)
        self.rng = np.random.default_rng(config.seed)
        self.streamer = TextStreamer(tokenizer)
        self.stop_filter = StopStringFilter([*config.stop, *stop_strings])
        self.context_window_size = context_window_size
        self.generated: list[int] = []
        self.num_prefilled = 0  # prompt tokens already in the KV cache
        self.pending_token: int | None = None  # sampled, to be fed by the next decode step
        self.finish_reason: str | None = None
        self.cancelled = False
        # Tokens this sequence may hold in the KV cache at most.
        self.max_kv_tokens = min(len(prompt_ids) + config.max_tokens, context_window_size)

    @property
    def prefill_done(self) -> bool:
        return self.num_prefilled == len(self.prompt_ids)

    @property
    def num_cached_tokens(self) -> int:
        return len(self.prompt_ids) + max(len(self.generated) - 1, 0)

    def append_logits(self, logits: np.ndarray) -> None:
        """Sample the next token from `logits`, stream its text, and stop when a rule says so."""
        if self.config.max_tokens == 0:
            self._finish("length", SequenceOutput())
            return
        history = [*self.prompt_ids, *self.generated]
        token = sample(logits, self.config, self.rng, history, self.generated)
        out = SequenceOutput()
        if self.top_logprobs is not None:
            out.logprobs.append(_logprob(logits, token, self.top_logprobs))
        if token in self.stop_token_ids:
            self._finish("stop", out)
            return
        self.generated.append(token)
        out.token_ids.append(token)
        out.text = self.stop_filter.put(self.streamer.put(token))
        if self.stop_filter.stopped:
            self._finish("stop", out)
        elif (
            len(self.generated) >= self.config.max_tokens
            or self.num_cached_tokens >= self.context_window_size
        ):
            self._finish("length", out)
        else:
            self.pending_token = token
            self.on_output(out)

    def _finish(self, reason: str, out: SequenceOutput) -> None:
        out.text += self.stop_filter.put(self.streamer.finish())
        out.text += self.stop_filter.finish()
        out.finish_reason = self.finish_reason = reason
        self.pending_token = None
        self.on_output(out)

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
