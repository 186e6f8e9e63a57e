"""`GenerationConfig`: how to sample; unset fields fall back to the model's defaults, then to
`DEFAULTS`, the one place built-in generation defaults are defined (`mlc build` records them in
the chat config where the model's `generation_config.json` is silent)."""

from __future__ import annotations

import dataclasses
from typing import Any

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
}


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
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"GenerationConfig: {message}")
