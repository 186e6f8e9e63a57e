"""`chat-format.json`: the model's chat template reduced to fixed text around turns.

The Python runtime renders a conversation with the model's Jinja chat template (or a built-in
`ConversationTemplate`). The chat page and the native runtime have no Jinja; they get the text
that template puts before the first user message, between an answer and the next user message,
and after each user message, found by rendering sentinel conversations and checked here against
full renderings, so that they prompt the model byte for byte as `ChatModule` does. `mlc build`
writes it into the build (where the template reduces); `mlc web` derives it again for a
`--conv-template` override.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .chat_config import ChatConfig
from .chat_module import choose_template, load_tokenizer, stop_token_ids
from .chat_template import JinjaChatTemplate
from .conversation import ConversationTemplate

FORMAT_NAME = "chat-format.json"
FORMAT_VERSION = 1
# Conversations the derived format must render exactly as the template does.
CHECKS = [
    ["Hello!"],
    ["What is 2 + 2?", "4.", "And  3 + 3?\n", " Six. ", "Thanks\tbye"],
    ["  spaced  ", "\nanswer\n", "ünïcödé 🙂"],
]

Template = ConversationTemplate | JinjaChatTemplate


class ChatFormatError(ValueError):
    """The template is not fixed text around each turn, so the page cannot render it."""


def _messages(contents: list[str]) -> list[dict[str, str]]:
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]


def render(fmt: dict[str, Any], messages: list[dict[str, str]]) -> str:
    """A conversation rendered with the format (what the page's `renderConversation` does)."""
    text = ""
    for i, message in enumerate(messages):
        content = message["content"].strip() if fmt["trim"] else message["content"]
        if message["role"] == "user":
            text += (fmt["first_user_prefix"] if i == 0 else fmt["user_prefix"]) + content
            text += fmt["user_suffix"]
        else:
            text += content
    return text


def turn_rules(template: Template) -> dict[str, Any]:
    """The text around turns, from sentinel renderings; ChatFormatError when it does not
    reproduce the template."""
    user1, answer1, user2 = "mlcUserOne", "mlcAnswerOne", "mlcUserTwo"
    one = template.render(_messages([user1]))
    if one.count(user1) != 1:
        raise ChatFormatError(f"{template.name} does not render a user message once")
    first_prefix, _, suffix = one.partition(user1)
    two = template.render(_messages([user1, answer1, user2]))
    start = first_prefix + user1 + suffix + answer1
    rest = two[len(start) :] if two.startswith(start) else ""
    user_prefix, found, second_suffix = rest.partition(user2)
    if not found or second_suffix != suffix:
        raise ChatFormatError(f"{template.name} does not render each turn with the same text")
    padded = template.render(_messages([f"  {user1}\n"]))
    fmt = {
        "first_user_prefix": first_prefix,
        "user_prefix": user_prefix,
        "user_suffix": suffix,
        "trim": padded == one,  # the template strips message contents (Llama 3's does)
    }
    for contents in CHECKS:
        messages = _messages(contents)
        if render(fmt, messages) != template.render(messages):
            raise ChatFormatError(
                f"{template.name} renders {contents!r} other than as fixed text around turns"
            )
    return fmt


def chat_format(model_dir: Path, conv_template: str | None = None) -> dict[str, Any]:
    """Everything a runtime without Jinja needs to prompt the model in `model_dir` as
    `ChatModule` does."""
    config = ChatConfig.load(model_dir)
    template = choose_template(model_dir, config, conv_template)
    tokenizer = load_tokenizer(model_dir)
    try:
        rules = turn_rules(template)
    except ChatFormatError as err:
        raise ChatFormatError(
            f"the chat page and the native runtime cannot use this model's chat template: {err}; "
            "choose a built-in one with --conv-template"
        ) from err
    return {
        "format_version": FORMAT_VERSION,
        "template": template.name,
        **rules,
        "add_bos": template.add_bos,
        "bos_token_id": config.bos_token_id,
        "stop_token_ids": sorted(stop_token_ids(config, tokenizer, template)),
        "stop_str": list(template.stop_str),
    }


def write_chat_format(model_dir: Path) -> str | None:
    """Write `chat-format.json` into the build in `model_dir`; the reason it cannot, or None."""
    try:
        fmt = chat_format(model_dir)
    except ChatFormatError as err:
        return str(err)
    (Path(model_dir) / FORMAT_NAME).write_text(json.dumps(fmt, indent=2))
    return None
