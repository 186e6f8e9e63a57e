"""The model's own chat template (Jinja, as in `tokenizer_config.json`), rendered the way
`transformers`' `apply_chat_template` renders it, so prompts are byte-identical."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.meta
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class JinjaChatTemplate:
    """Renders a whole conversation; the chat runtime prefills only what is new."""

    name = "model chat template"
    add_bos = False  # the template writes BOS itself when the model wants one
    stop_str: tuple[str, ...] = ()
    stop_tokens: tuple[str, ...] = ()

    def __init__(self, source: str, special_tokens: dict[str, str | None]):
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source
        self.template = env.from_string(source)
        self.special_tokens = {k: v for k, v in special_tokens.items() if v is not None}
        # Whether the template renders `tools` itself (else tools are written into the turns).
        self.takes_tools = "tools" in jinja2.meta.find_undeclared_variables(env.parse(source))

    def render(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """The whole conversation, ending with the generation prompt; `tools` as
        `apply_chat_template` passes them (only when given)."""
        extra = {} if tools is None else {"tools": tools}
        return self.template.render(
            messages=messages, add_generation_prompt=True, **self.special_tokens, **extra
        )
