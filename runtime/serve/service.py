"""The served model: turns API requests into engine sequences and their outputs into async
streams for the HTTP handlers (the engine runs on its own thread)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jinja2

from ..batch_engine import BatchEngine, EngineOverloaded, EngineShuttingDown
from ..chat_config import ArtifactError, ChatConfig
from ..chat_module import choose_template, load_tokenizer, stop_token_ids
from ..compiled_model import CompiledModel
from ..generation_config import GenerationConfig
from ..grammar import GrammarError, Grammars, GrammarUnavailable, TokenConstraint
from ..sequence import OutputCallback, Sequence, SequenceOutput
from ..tool_calling import ModelTools, ToolRequest
from .errors import APIError

# Default KV cache size when the batch at full context would need more (fp32 SmolLM2-135M:
# 46 KB per token, so 8192 tokens take 0.38 GB).
DEFAULT_KV_TOKENS = 8192


@dataclasses.dataclass
class EngineOptions:
    max_batch_size: int | None = None  # None: what the library was built for
    kv_cache_tokens: int | None = None  # None: every slot at full context, up to 8192
    max_queue: int = 256
    queue_timeout: float = 60.0
    device: str = "cpu"
    model_lib: str | None = None
    # Prompt tokens per engine step (at most the build's): smaller keeps generating requests
    # streaming while a long prompt is prefilled, and is the prefix cache's granularity.
    # Answers equal ChatModule's with the same size.
    prefill_chunk_size: int = 64
    tool_call_format: str | None = None  # None: the one the model's chat template was made for
    prefix_cache: bool | None = None  # None: where the model can share KV prefixes
    speculative: str | None = None  # a drafter (runtime/speculative.py), or None
    num_draft_tokens: int = 8


def kv_cache_tokens(options: EngineOptions, chat_config: ChatConfig) -> int:
    """The KV cache's size in tokens: `--kv-cache-tokens`, else every batch slot at full
    context, up to `DEFAULT_KV_TOKENS` (at least one full context)."""
    batch = options.max_batch_size or chat_config.max_batch_size  # more is refused
    context = chat_config.context_window_size
    return options.kv_cache_tokens or min(batch * context, max(context, DEFAULT_KV_TOKENS))


class ServedModel:
    """One model behind the API: tokenizer, chat template, stop rules and the batching engine."""

    def __init__(self, model_dir: Path, options: EngineOptions, name: str | None = None):
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ArtifactError(
                f"model directory not found: {model_dir} (build one with mlc build)"
            )
        chat_config = ChatConfig.load(model_dir)
        self.model = CompiledModel(
            model_dir,
            options.model_lib,
            options.device,
            max_batch_size=options.max_batch_size or chat_config.max_batch_size,
            kv_cache_tokens=kv_cache_tokens(options, chat_config),
            prefill_chunk_size=min(options.prefill_chunk_size, chat_config.prefill_chunk_size),
        )
        self.name = name or model_dir.name
        self.created = int(time.time())
        config = self.model.chat_config
        self.tokenizer = load_tokenizer(model_dir)
        self.template = choose_template(model_dir, config, None)
        self.tools = ModelTools(self.template, options.tool_call_format)
        self.bos_token_id = config.bos_token_id
        self.stop_token_ids = stop_token_ids(config, self.tokenizer, self.template)
        self.context_window_size = self.model.context_window_size
        self.vocab_size = self.model.vocab_size
        self.grammars = Grammars(self.tokenizer, self.vocab_size, self.stop_token_ids)
        self.engine = BatchEngine(
            self.model,
            max_queue=options.max_queue,
            queue_timeout=options.queue_timeout,
            prefix_cache=options.prefix_cache,
            speculative=options.speculative,
            num_draft_tokens=options.num_draft_tokens,
        )

    # --- prompts -----------------------------------------------------------------------------

    def chat_prompt(self, messages: list[dict], tools: ToolRequest | None = None) -> list[int]:
        """The conversation (with the request's tools) rendered by the model's template, as
        `ChatModule` feeds it."""
        try:
            text = self.tools.render(messages, tools)
        except jinja2.TemplateError as err:
            message = f"the chat template rejected the messages: {err}"
            raise APIError(400, message, "messages") from err
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if self.template.add_bos and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return self.check_prompt(ids, "messages")

    def text_prompt(self, prompt: str | list[int]) -> list[int]:
        """A raw completion prompt: text (after BOS) or token ids as given."""
        if isinstance(prompt, list):
            bad = [t for t in prompt if not 0 <= t < self.vocab_size]
            if bad:
                raise APIError(
                    400,
                    f"token id {bad[0]} is outside the vocabulary of {self.vocab_size}",
                    "prompt",
                )
            return self.check_prompt(list(prompt), "prompt")
        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids
        if self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return self.check_prompt(ids, "prompt")

    def check_prompt(self, ids: list[int], param: str) -> list[int]:
        if not ids:
            raise APIError(400, "the prompt is empty", param)
        if len(ids) > self.context_window_size:
            raise APIError(
                400,
                f"the prompt has {len(ids)} tokens but the context window is "
                f"{self.context_window_size}; shorten it",
                param,
                code="context_length_exceeded",
            )
        return ids

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> list[int]:
        """The token's own bytes, also when it holds only part of a UTF-8 character."""
        text = self.token_text(token_id)
        if "\ufffd" not in text:
            return list(text.encode())
        piece = self.tokenizer.id_to_token(token_id) or ""
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:  # SentencePiece
            return [int(piece[3:5], 16)]
        if all(ch in _BYTE_LEVEL for ch in piece):  # GPT-2 style byte-level BPE
            return [_BYTE_LEVEL[ch] for ch in piece]
        return list(text.encode())

    # --- generation --------------------------------------------------------------------------

    async def start(
        self,
        prompts: list[list[int]],
        configs: list[GenerationConfig],
        top_logprobs: int | None,
        ignore_eos: bool = False,
    ) -> Generation:
        """Queue one sequence per (prompt, config); a 429 `APIError` when the queue is full."""
        try:
            defaults = self.model.chat_config.generation_defaults()
            configs = [c.resolved(defaults) for c in configs]
        except ValueError as err:
            raise APIError(400, str(err).removeprefix("GenerationConfig: ")) from err
        for config in configs:
            try:
                config.check_vocabulary(self.vocab_size)
            except ValueError as err:
                message = str(err).removeprefix("GenerationConfig: ")
                raise APIError(400, message, "logit_bias") from err
        stops = set() if ignore_eos else self.stop_token_ids
        constraints: list[TokenConstraint | None] = [None] * len(configs)
        if any(c.constraint() is not None or c.tools for c in configs):
            # Compiling a schema may take a while: off the event loop.
            constraints = await asyncio.to_thread(self._constraints, configs, stops)
        generation = Generation(self.engine, asyncio.get_running_loop())
        for index, (prompt, config) in enumerate(zip(prompts, configs, strict=True)):
            sequence = Sequence(
                prompt,
                config,
                self.tokenizer,
                stops,
                list(self.template.stop_str),
                generation.callback(index),
                self.context_window_size,
                top_logprobs,
                constraints[index],
            )
            try:
                self.engine.submit(sequence)
            except EngineOverloaded as err:
                generation.cancel()
                status = 503 if isinstance(err, EngineShuttingDown) else 429
                raise APIError(status, str(err), code="overloaded", retry_after=1) from err
            generation.sequences.append(sequence)
        return generation

    def _constraints(
        self, configs: list[GenerationConfig], stops: set[int]
    ) -> list[TokenConstraint | None]:
        """Each config's grammar state; a 400 `APIError` naming `response_format` when xgrammar
        is missing or the schema does not compile."""
        states: list[TokenConstraint | None] = []
        for config in configs:
            tools = config.tool_request()
            constraint = config.constraint() if tools is None else self.tools.constraint(tools)
            try:
                state = None if constraint is None else self.grammars.start(constraint, stops)
            except (GrammarError, GrammarUnavailable) as err:
                code = "invalid_schema" if isinstance(err, GrammarError) else "unsupported"
                param = "response_format" if tools is None else "tools"
                raise APIError(400, str(err), param, code) from err
            states.append(state)
        return states


class Generation:
    """The sequences of one request (`n` choices, several prompts), their outputs merged into
    one async stream of `(index, output)`; fed from the engine thread."""

    def __init__(self, engine: BatchEngine, loop: asyncio.AbstractEventLoop):
        self.engine = engine
        self.loop = loop
        self.sequences: list[Sequence] = []
        self.queue: asyncio.Queue[tuple[int, SequenceOutput]] = asyncio.Queue()
        self.buffered: list[tuple[int, SequenceOutput]] = []
        self.finished: set[int] = set()
        self.disconnected = False
        self.started = time.perf_counter()
        self.first_token_seconds: float | None = None

    @property
    def done(self) -> bool:
        return len(self.finished) == len(self.sequences)

    def callback(self, index: int) -> OutputCallback:
        def put(out: SequenceOutput) -> None:
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, out))
            except RuntimeError:  # the event loop is closed: the server has shut down
                pass

        return put

    async def admitted(self) -> None:
        """Wait until the engine admits every sequence; a 503 `APIError` if one never is."""
        waiting = set(range(len(self.sequences)))
        while waiting:
            index, out = await self.queue.get()
            if index not in waiting:
                self.buffered.append((index, out))
                continue
            waiting.discard(index)
            if out.error is not None:
                self.finished.add(index)
                self.cancel()
                raise APIError(503, out.error, code="overloaded", retry_after=1)

    async def outputs(self) -> AsyncIterator[tuple[int, SequenceOutput]]:
        while not self.done:
            index, out = self.buffered.pop(0) if self.buffered else await self.queue.get()
            if out.token_ids and self.first_token_seconds is None:
                self.first_token_seconds = time.perf_counter() - self.started
            if out.finish_reason is not None:
                self.finished.add(index)
            yield index, out

    def cancel(self) -> None:
        """Cancel every unfinished sequence (their KV pages are freed before the next step)."""
        for index, sequence in enumerate(self.sequences):
            if index not in self.finished:
                self.engine.cancel(sequence)


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's map from the printable characters byte-level BPE uses back to bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


_BYTE_LEVEL = _byte_level_alphabet()
