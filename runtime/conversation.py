"""Conversation templates: how a chat turn becomes the text the model was trained on.

A template is plain data (JSON-serialisable), so `mlc-chat-config.json` can name a built-in one
or embed its own. The chat runtime keeps earlier turns in the KV cache and asks the template
only for the text of the new turn.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ConversationTemplate:
    name: str
    # Placed once at the start of the conversation when there is a system message.
    system_template: str = "{system_message}"
    system_message: str = ""
    # Some formats (Llama 2, Mistral, Gemma) carry the system text inside the first user turn.
    system_in_first_user: bool = False
    user_template: str = "{content}"
    # The generation prompt after a user turn, and what closes an answer before the next turn.
    assistant_prefix: str = ""
    assistant_suffix: str = ""
    add_bos: bool = True
    stop_str: tuple[str, ...] = ()
    # Special tokens (by their text) that end an answer, besides the model's EOS.
    stop_tokens: tuple[str, ...] = ()

    def render_turn(self, content: str, first_turn: bool, system_message: str | None = None) -> str:
        """The text to append for a new user turn, ending with the generation prompt."""
        text = ""
        system = self.system_message if system_message is None else system_message
        if first_turn and system:
            rendered = self.system_template.replace("{system_message}", system)
            if self.system_in_first_user:
                content = rendered + content
            else:
                text += rendered
        if not first_turn:
            text += self.assistant_suffix
        return text + self.user_template.replace("{content}", content) + self.assistant_prefix

    def render(self, messages: list[dict[str, str]]) -> str:
        """The whole conversation as text, ending with the generation prompt after the last
        user message."""
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        text, first = "", True
        for message in messages:
            if message["role"] == "user":
                text += self.render_turn(message["content"], first, system)
                first = False
            elif message["role"] == "assistant":
                text += message["content"]
        return text

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversationTemplate:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"conversation template has unknown fields: {sorted(unknown)}")
        data = dict(data)
        for key in ("stop_str", "stop_tokens"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


_BUILTIN = [
    # Raw text continuation: the prompt is fed as is, after BOS.
    ConversationTemplate(name="LM"),
    ConversationTemplate(
        name="llama-2",
        system_template="<<SYS>>\n{system_message}\n<</SYS>>\n\n",
        system_in_first_user=True,
        user_template="[INST] {content} [/INST]",
        assistant_suffix=" </s><s>",
        stop_tokens=("</s>",),
    ),
    ConversationTemplate(
        name="llama-3",
        system_template="<|start_header_id|>system<|end_header_id|>\n\n{system_message}<|eot_id|>",
        user_template="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant_suffix="<|eot_id|>",
        stop_tokens=("<|eot_id|>", "<|end_of_text|>"),
    ),
    ConversationTemplate(
        name="chatml",
        system_template="<|im_start|>system\n{system_message}<|im_end|>\n",
        system_message="You are a helpful assistant.",
        user_template="<|im_start|>user\n{content}<|im_end|>\n",
        assistant_prefix="<|im_start|>assistant\n",
        assistant_suffix="<|im_end|>\n",
        add_bos=False,
        stop_tokens=("<|im_end|>",),
    ),
    ConversationTemplate(
        name="mistral",
        system_template="{system_message}\n\n",
        system_in_first_user=True,
        user_template="[INST] {content} [/INST]",
        assistant_suffix="</s>",
        stop_tokens=("</s>",),
    ),
    ConversationTemplate(
        name="zephyr",
        system_template="<|system|>\n{system_message}</s>\n",
        user_template="<|user|>\n{content}</s>\n",
        assistant_prefix="<|assistant|>\n",
        assistant_suffix="</s>\n",
        stop_tokens=("</s>",),
    ),
    ConversationTemplate(
        name="phi-2",
        user_template="Instruct: {content}\n",
        assistant_prefix="Output:",
        assistant_suffix="\n",
        add_bos=False,
        stop_str=("Instruct:",),
        stop_tokens=("<|endoftext|>",),
    ),
    ConversationTemplate(
        name="gemma",
        system_template="{system_message}\n\n",
        system_in_first_user=True,
        user_template="<start_of_turn>user\n{content}<end_of_turn>\n",
        assistant_prefix="<start_of_turn>model\n",
        assistant_suffix="<end_of_turn>\n",
        stop_tokens=("<end_of_turn>",),
    ),
]
TEMPLATES: dict[str, ConversationTemplate] = {t.name: t for t in _BUILTIN}
TEMPLATES["tinyllama"] = dataclasses.replace(TEMPLATES["zephyr"], name="tinyllama")


def get_template(spec: str | dict[str, Any]) -> ConversationTemplate:
    """A built-in template by name, or one embedded as a dict in `mlc-chat-config.json`."""
    if isinstance(spec, dict):
        return ConversationTemplate.from_dict(spec)
    if spec not in TEMPLATES:
        raise ValueError(
            f"unknown conversation template {spec!r}; built-in: {', '.join(sorted(TEMPLATES))}"
        )
    return TEMPLATES[spec]
