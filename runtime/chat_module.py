"""`ChatModule`: multi-turn chat over a built model, with streaming and statistics."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from tokenizers import Tokenizer

from .chat_config import ArtifactError, ChatConfig, read_json
from .chat_template import JinjaChatTemplate
from .compiled_model import CompiledModel
from .conversation import ConversationTemplate, get_template
from .generation import GenerationStep
from .generation_config import GenerationConfig
from .grammar import Grammars, TokenConstraint
from .speculative import DraftModel, SpeculationStats, decode_steps, drafter_for
from .tool_calling import ModelTools, ToolCall, ToolCallStream

StreamCallback = Callable[[str], None]


@dataclasses.dataclass
class GenerationStats:
    prefill_tokens: int = 0  # computed; the prompt's others came from the prefix cache
    prefill_seconds: float = 0.0
    cached_tokens: int = 0  # prompt tokens whose KV a previous conversation left (reset_chat)
    decode_tokens: int = 0
    decode_seconds: float = 0.0
    forced_tokens: int = 0  # answer tokens a grammar forced (fed without sampling)
    draft_tokens: int = 0  # speculative guesses verified
    accepted_draft_tokens: int = 0  # of them, those that joined the answer
    finish_reason: str = ""  # "stop", "length", "interrupted" or "tool_calls"

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The build's `tokenizer.json`."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise ArtifactError(f"tokenizer not found: {path}")
    return Tokenizer.from_file(str(path))


def read_tokenizer_config(model_dir: Path) -> dict:
    """The build's `tokenizer_config.json` (special tokens, flags), or {} where it has none."""
    path = Path(model_dir) / "tokenizer_config.json"
    config = read_json(path, "tokenizer config") if path.is_file() else {}
    return config if isinstance(config, dict) else {}


def choose_template(
    model_dir: Path, config: ChatConfig, override: str | dict | None = None
) -> ConversationTemplate | JinjaChatTemplate:
    """An explicit template, else the one named at build time, else the model's own chat
    template, else raw text (`LM`)."""
    if override is not None or config.conv_template:
        return get_template(override if override is not None else config.conv_template)
    if config.chat_template:
        tokens = read_tokenizer_config(model_dir)
        special = {
            k: v if isinstance(v, str) else (v or {}).get("content")
            for k, v in tokens.items()
            if k.endswith("_token")
        }
        return JinjaChatTemplate(config.chat_template, special)
    return get_template("LM")


def stop_token_ids(
    config: ChatConfig, tokenizer: Tokenizer, template: ConversationTemplate | JinjaChatTemplate
) -> set[int]:
    """EOS and the template's stop tokens."""
    ids = set(config.eos_token_ids)
    for token in template.stop_tokens:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            ids.add(token_id)
    return ids


class ChatModule:
    """Chat with a model built by `mlc build`.

    Earlier turns stay in the KV cache: each turn prefills only its own new tokens, in chunks
    of `prefill_chunk_size` (default: the build's; `mlc serve --prefill-chunk-size` with the
    same value gives the same answers bit for bit). With `prefix_cache`, `reset_chat` keeps the
    whole chunks the conversation's first prompt filled, and a new conversation that starts
    with them (the same system prompt, say) prefills only the rest, with the same answers.
    `draft_model`: a smaller build with the same tokenizer, for
    `GenerationConfig(speculative="draft-model")`.
    """

    def __init__(
        self,
        model: str | Path,
        model_lib: str | None = None,
        device: str = "cpu",
        conv_template: str | dict | None = None,
        verify_weights: bool = True,
        tool_call_format: str | None = None,
        prefill_chunk_size: int | None = None,
        prefix_cache: bool = True,
        draft_model: str | Path | None = None,
    ):
        self.engine = CompiledModel(
            model, model_lib, device, verify_weights, prefill_chunk_size=prefill_chunk_size
        )
        self.prefix_cache = prefix_cache
        config = self.engine.chat_config
        self.chat_config = config
        self.tokenizer = load_tokenizer(self.engine.model_dir)
        self.template = choose_template(self.engine.model_dir, config, conv_template)
        self.bos_token_id = config.bos_token_id
        self.stop_token_ids = stop_token_ids(config, self.tokenizer, self.template)
        # How the model writes tool calls (None: the one its chat template was made for).
        self.tools = ModelTools(self.template, tool_call_format)
        self.messages: list[dict] = []  # the conversation so far, as OpenAI's API writes it
        self.history_ids: list[int] = []  # every token in the KV cache, in order
        self._kv_text = ""  # the text of those tokens (and of the pending one)
        self._pending: list[int] = []  # the last answer's final tokens, not yet in the KV cache
        self._grammars = Grammars(self.tokenizer, self.engine.vocab_size, self.stop_token_ids)
        self._interrupted = False
        self.last_stats = GenerationStats()
        self.last_output_ids: list[int] = []  # the tokens of the last answer
        self.last_tool_calls: list[ToolCall] = []  # the calls the last answer made
        # For speculative="draft-model": a smaller build with the same tokenizer.
        self.draft: DraftModel | None = None
        if draft_model is not None:
            draft = CompiledModel(draft_model, device=device, verify_weights=verify_weights)
            vocabulary = load_tokenizer(draft.model_dir).get_vocab(with_added_tokens=True)
            target = self.tokenizer.get_vocab(with_added_tokens=True)
            self.draft = DraftModel(draft, target, vocabulary)

    # --- public API -------------------------------------------------------------------------

    def generate(
        self,
        prompt: str | list[dict],
        generation_config: GenerationConfig | None = None,
        progress_callback: StreamCallback | None = None,
    ) -> str:
        """Answer the next turn of the conversation: `prompt` is the user's text, or messages
        as OpenAI's API writes them (`{"role": "tool", "tool_call_id": ..., "content": ...}`
        results of the last answer's calls, user messages). Returns the answer's text; streamed
        pieces go to the callback as they are decoded. Tool calls the answer makes (with
        `tools` in the config) are in `last_tool_calls`, and `last_stats.finish_reason` is
        then "tool_calls"."""
        turn = _turn_messages(prompt)
        defaults = self.chat_config.generation_defaults()
        config = (generation_config or GenerationConfig()).resolved(defaults)
        config.check_vocabulary(self.engine.vocab_size)
        request = config.tool_request()
        constraint = self._constraint(config)
        messages = [*self.messages, *turn]
        full_text = self.tools.render(messages, request)
        # Prefill only what the KV cache lacks. A template that rewrites earlier turns (or an
        # answer cut at a stop string) breaks the prefix: then the conversation is re-fed whole.
        incremental = full_text.startswith(self._kv_text)
        new_text = full_text[len(self._kv_text) :] if incremental else full_text
        ids = self.tokenizer.encode(new_text, add_special_tokens=False).ids
        fresh = not incremental or not self.messages
        if fresh and self.template.add_bos and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        if incremental:
            ids = [*self._pending, *ids]
        self.engine.check_fits(len(ids), fresh=not incremental)
        if not incremental:
            self.reset_chat()
        self._pending = []
        calls = None if request is None else self.tools.stream()
        callback = progress_callback if calls is None else _content_only(calls, progress_callback)
        answer = self._generate_from(ids, config, callback, False, constraint)
        reply: dict = {"role": "assistant", "content": answer}
        self.last_tool_calls = []
        if calls is not None:
            rest = calls.finish().content
            if rest and progress_callback is not None:
                progress_callback(rest)
            reply["content"] = calls.content
            if calls.calls:
                self.last_tool_calls = calls.calls
                reply["tool_calls"] = [c.to_openai() for c in calls.calls]
                if self.last_stats.finish_reason == "stop":
                    self.last_stats.finish_reason = "tool_calls"
        self.messages = [*messages, reply]
        self._kv_text = full_text + answer
        return reply["content"]

    def benchmark_generate(self, prompt: str, generate_length: int) -> str:
        """Reset, prefill `prompt` as raw text and decode exactly `generate_length` tokens
        (all of it: nothing is taken from the prefix cache)."""
        self.reset_chat()
        self.engine.reset()
        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids
        if self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        config = GenerationConfig(temperature=0, max_tokens=generate_length).resolved({})
        out = self._generate_from(ids, config, None, ignore_stop=True)
        self.reset_chat()
        return out

    def prompt_tokens(self, prompt: str | list[dict]) -> int:
        """How many tokens `prompt` takes as a new conversation's first turn (chat template
        and BOS included)."""
        text = self.tools.render(_turn_messages(prompt), None)
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        bos = self.template.add_bos and self.bos_token_id is not None
        return len(ids) + bos

    def interrupt(self) -> None:
        """Stop the answer being generated after the current token (safe from a signal)."""
        self._interrupted = True

    def reset_chat(self) -> None:
        """Start a new conversation (the KV of the last one's first whole prefill chunks stays
        for the next, with `prefix_cache`)."""
        self.engine.reset(keep_prefix=self.prefix_cache)
        self.messages = []
        self.history_ids = []
        self._kv_text = ""
        self._pending = []

    def stats(self) -> str:
        s = self.last_stats
        cached = f", {s.cached_tokens} cached" if s.cached_tokens else ""
        return (
            f"prefill: {s.prefill_tokens_per_s:.1f} tok/s ({s.prefill_tokens} tokens{cached}), "
            f"decode: {s.decode_tokens_per_s:.1f} tok/s ({s.decode_tokens} tokens)"
        )

    # --- generation loop --------------------------------------------------------------------

    def _constraint(self, config: GenerationConfig) -> TokenConstraint | None:
        """The answer's grammar state, when the config asks for structured output or tools."""
        request = config.tool_request()
        constraint = config.constraint() if request is None else self.tools.constraint(request)
        return None if constraint is None else self._grammars.start(constraint, self.stop_token_ids)

    def _generate_from(
        self,
        ids: list[int],
        config: GenerationConfig,
        callback: StreamCallback | None,
        ignore_stop: bool,
        constraint: TokenConstraint | None = None,
    ) -> str:
        self._interrupted = False
        drafter = None
        if config.speculative is not None:
            if self.engine.no_chains is not None:
                raise ValueError(
                    f"speculative decoding cannot run on {self.engine.model_dir.name}: "
                    f"{self.engine.no_chains}"
                )
            drafter = drafter_for(config.speculative, self.draft)
        stats = GenerationStats()
        start = time.perf_counter()
        logits = self.engine.prefill(ids)
        self.history_ids.extend(ids)
        stats.prefill_seconds = time.perf_counter() - start
        stats.cached_tokens = self.engine.reused_tokens
        stats.prefill_tokens = len(ids) - stats.cached_tokens
        step = GenerationStep(
            self.tokenizer,
            config,
            context_ids=self.history_ids,
            kv_tokens=self.engine.num_cached_tokens,
            context_window_size=self.engine.context_window_size,
            stop_token_ids=() if ignore_stop else self.stop_token_ids,
            stop_strings=() if ignore_stop else self.template.stop_str,
            constraint=constraint,
            jump_forward=True,
        )
        speculation = SpeculationStats()
        pieces: list[str] = []
        start = time.perf_counter()
        steps = decode_steps(
            self.engine,
            step,
            logits,
            self.history_ids,
            drafter,
            config.num_draft_tokens,
            speculation,
        )
        for out in steps:
            stats.forced_tokens += len(out.forced)
            if out.text:
                pieces.append(out.text)
                if callback is not None:
                    callback(out.text)
            if out.finish_reason is not None:
                # Appended but never fed: the next turn feeds them first.
                self._pending = out.to_feed
            elif self._interrupted:
                step.interrupt()
        stats.finish_reason = step.finish_reason or ""
        stats.decode_seconds = time.perf_counter() - start
        # Count the final sampled token too: it was produced by the last forward pass.
        stats.decode_tokens = len(step.generated)
        stats.draft_tokens = speculation.drafted
        stats.accepted_draft_tokens = speculation.accepted
        self.last_stats = stats
        self.last_output_ids = step.generated
        return "".join(pieces)


def _turn_messages(prompt: str | list[dict]) -> list[dict]:
    """The messages of a new turn, checked."""
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("the prompt is empty; give some text to respond to")
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError("the prompt must be text or a non-empty list of messages")
    for message in prompt:
        if not isinstance(message, dict) or message.get("role") not in ("user", "tool"):
            raise ValueError(
                "a turn's messages are {'role': 'user', 'content': ...} or {'role': 'tool', "
                f"'tool_call_id': ..., 'content': ...}}, not {message!r}"
            )
        if not isinstance(message.get("content"), str):
            raise ValueError(f"a message's content must be a string: {message!r}")
    return [dict(m) for m in prompt]


def _content_only(stream: ToolCallStream, callback: StreamCallback | None) -> StreamCallback:
    """A stream callback that passes on the answer's text and keeps its tool calls back."""

    def put(piece: str) -> None:
        delta = stream.feed(piece)
        if delta.content and callback is not None:
            callback(delta.content)

    return put
