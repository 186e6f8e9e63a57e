"""`GenerationConfig`: how to sample and what the answer must match; unset fields fall back to
the model's defaults, then to `DEFAULTS`, the one place built-in generation defaults are defined
(`mlc build` records them in the chat config where the model's `generation_config.json` is
silent). An unknown keyword is a `TypeError`, as for any dataclass."""

from __future__ import annotations

import dataclasses
from typing import Any

from .grammar import Constraint, constraint_of
from .tool_calling.spec import ToolRequest, tool_request

DEFAULTS: dict[str, Any] = {
    "temperature": 0.7,
    "top_p": 0.95,
    "top_k": 40,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "max_tokens": 512,
    "stop": [],
    "stop_token_ids": [],
    "num_draft_tokens": 8,
}
# Speculative decoding's drafters (`runtime/speculative.py`).
SPECULATIVE_METHODS = ("prompt-lookup", "draft-model")


@dataclasses.dataclass
class GenerationConfig:
    temperature: float | None = None  # 0 means greedy
    top_p: float | None = None
    top_k: int | None = None  # 0 disables
    min_p: float | None = None
    repetition_penalty: float | None = None  # over prompt and answer, as in transformers
    presence_penalty: float | None = None  # over the answer, as in the OpenAI API
    frequency_penalty: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    logit_bias: dict[int, float] | None = None  # added to the logits first, as in the OpenAI API
    # Structured output (at most one; see `runtime/grammar.py`): {"type": "json_object"} or
    # {"type": "json_schema", "schema": {...}}; an EBNF grammar; a regular expression.
    response_format: dict | None = None
    grammar: str | None = None
    regex: str | None = None
    # Tool calling (see `runtime/tool_calling`), as in the OpenAI API: `tools` is a list of
    # {"type": "function", "function": {"name", "description", "parameters"}}; `tool_choice`
    # "none", "auto" (the default with tools), "required" or {"type": "function", "function":
    # {"name": ...}}; `parallel_tool_calls` false allows one call per answer.
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    # Speculative decoding (`runtime/speculative.py`): a drafter from SPECULATIVE_METHODS, and
    # the most draft tokens verified per forward pass. Greedy answers stay identical; sampled
    # ones keep their distribution.
    speculative: str | None = None
    num_draft_tokens: int | None = None

    def resolved(self, defaults: dict[str, Any]) -> GenerationConfig:
        """This config with each unset field taken from `defaults` (the model's, see
        `ChatConfig.generation_defaults`), then from `DEFAULTS`."""
        values = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                value = defaults.get(field.name, DEFAULTS.get(field.name))
            values[field.name] = value
        config = GenerationConfig(**values)
        config.validate()
        return config

    def validate(self) -> None:
        checks = [
            (self.temperature is None or self.temperature >= 0, "temperature must be >= 0"),
            (self.top_p is None or 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k is None or self.top_k >= 0, "top_k must be >= 0"),
            (self.min_p is None or 0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (
                self.repetition_penalty is None or self.repetition_penalty > 0,
                "repetition_penalty must be > 0",
            ),
            (self.max_tokens is None or self.max_tokens >= 0, "max_tokens must be >= 0"),
            (
                self.speculative is None or self.speculative in SPECULATIVE_METHODS,
                f"speculative must be one of {', '.join(SPECULATIVE_METHODS)} (or None), not "
                f"{self.speculative!r}",
            ),
            (
                self.num_draft_tokens is None or 1 <= self.num_draft_tokens <= 64,
                "num_draft_tokens must be in 1..64",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"GenerationConfig: {message}")
        for token, bias in (self.logit_bias or {}).items():
            if not isinstance(token, int) or isinstance(token, bool) or token < 0:
                raise ValueError(f"GenerationConfig: logit_bias keys are token ids, not {token!r}")
            number = isinstance(bias, int | float) and not isinstance(bias, bool)
            if not number or not -100 <= bias <= 100:
                raise ValueError(
                    f"GenerationConfig: logit_bias of token {token} must be a number in "
                    f"[-100, 100], not {bias!r}"
                )
        try:
            constraint = self.constraint()
            tools = self.tool_request()
        except ValueError as err:
            raise ValueError(f"GenerationConfig: {err}") from err
        if constraint is not None and tools is not None:
            raise ValueError(
                "GenerationConfig: tools cannot be combined with response_format, grammar or "
                "regex in one generation; ask for one of them"
            )

    def check_vocabulary(self, vocab_size: int) -> None:
        """`ValueError` naming a token id (in `logit_bias` or `stop_token_ids`) that is not in
        the model's vocabulary of `vocab_size`."""
        for name in ("logit_bias", "stop_token_ids"):
            outside = [t for t in getattr(self, name) or () if not 0 <= t < vocab_size]
            if outside:
                raise ValueError(
                    f"GenerationConfig: {name} names token {outside[0]}, outside the "
                    f"vocabulary of {vocab_size}"
                )

    def constraint(self) -> Constraint | None:
        """What the answer must match (`response_format`, `grammar` or `regex`), or None."""
        return constraint_of(self.response_format, self.grammar, self.regex)

    def tool_request(self) -> ToolRequest | None:
        """The tools offered and the tool choice, checked, or None without tools."""
        return tool_request(self.tools, self.tool_choice, self.parallel_tool_calls)
