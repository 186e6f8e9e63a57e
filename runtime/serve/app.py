"""The FastAPI application: OpenAI-compatible routes over a `ServedModel`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..generation_config import GenerationConfig
from ..sequence import TokenLogprob
from . import protocol as api
from .errors import (
    APIError,
    error_body,
    handle_api_error,
    handle_http_error,
    handle_unexpected,
    handle_validation_error,
)
from .metrics import ServerMetrics
from .middleware import APIKeyMiddleware, BodyLimitMiddleware, RequestCountMiddleware
from .service import Generation, ServedModel

ENDPOINTS = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"}
ERROR_RESPONSES = {
    status: {"model": api.ErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503)
}


def create_app(
    served: ServedModel,
    api_key: str | None = None,
    max_body_bytes: int = 1 << 20,
    shutdown_timeout: float = 30.0,
) -> FastAPI:
    metrics = ServerMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # Uvicorn has already waited for in-flight responses; end whatever is left cleanly.
        await asyncio.to_thread(served.engine.shutdown, shutdown_timeout)

    app = FastAPI(title="mlc serve", summary="OpenAI-compatible API", lifespan=lifespan)
    app.add_exception_handler(APIError, handle_api_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(HTTPException, handle_http_error)
    app.add_exception_handler(Exception, handle_unexpected)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    app.add_middleware(RequestCountMiddleware, metrics=metrics, endpoints=ENDPOINTS)

    def check_model(name: str | None) -> None:
        if name not in (None, "", served.name):
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {served.name!r}",
                "model",
                code="model_not_found",
            )

    def watch_disconnect(request: Request, generation: Generation) -> asyncio.Task:
        """Cancel the sequences as soon as the client goes away (also while they are queued)."""

        async def watch() -> None:
            while not generation.done:
                if await request.is_disconnected():
                    generation.disconnected = True
                    generation.cancel()
                    return
                await asyncio.sleep(0.2)

        return asyncio.create_task(watch())

    async def run(
        generation: Generation, watcher: asyncio.Task, stream, prompt_tokens: int
    ) -> AsyncIterator:
        """Drive `stream(generation)`, then count what it did."""
        try:
            async for item in stream(generation):
                yield item
        finally:
            watcher.cancel()
            if generation.disconnected or not generation.done:  # the client went away
                generation.cancel()
                metrics.count_cancelled()
            completion = sum(len(s.generated) for s in generation.sequences)
            metrics.count_tokens(prompt_tokens, completion)
            metrics.observe(
                generation.first_token_seconds, time.perf_counter() - generation.started
            )

    async def respond(request: Request, generation: Generation, stream: bool, formatter):
        """Stream server-sent events, or collect everything into one JSON response."""
        watcher = watch_disconnect(request, generation)
        try:
            await generation.admitted()
        except BaseException:
            watcher.cancel()
            generation.cancel()
            raise
        stream_fn = formatter.events if stream else formatter.collect
        events = run(generation, watcher, stream_fn, formatter.prompt_tokens)
        if stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(_sse(events), media_type="text/event-stream", headers=headers)
        result = [item async for item in events][-1]
        if isinstance(result, APIError):
            raise result
        return result

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def get_metrics() -> str:
        return metrics.render(served.engine.stats())

    @app.get("/v1/models", response_model=api.ModelList, responses=ERROR_RESPONSES)
    async def models() -> api.ModelList:
        card = api.ModelCard(
            id=served.name, created=served.created, max_model_len=served.context_window_size
        )
        return api.ModelList(data=[card])

    @app.post("/v1/chat/completions", response_model=api.ChatCompletion, responses=ERROR_RESPONSES)
    async def chat_completions(body: api.ChatCompletionRequest, request: Request):
        check_model(body.model)
        if body.top_logprobs and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs to be true", "top_logprobs")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt = served.chat_prompt(messages)
        max_tokens = body.max_completion_tokens
        if max_tokens is None:
            max_tokens = body.max_tokens
        configs = [_config(body, max_tokens, i) for i in range(body.n)]
        top = (body.top_logprobs or 0) if body.logprobs else None
        generation = served.start([prompt] * body.n, configs, top, body.ignore_eos)
        formatter = ChatFormatter(served, body, len(prompt))
        return await respond(request, generation, body.stream, formatter)

    @app.post("/v1/completions", response_model=api.Completion, responses=ERROR_RESPONSES)
    async def completions(body: api.CompletionRequest, request: Request):
        check_model(body.model)
        if isinstance(body.prompt, list) and isinstance(body.prompt[0], str):
            texts: list = list(body.prompt)
        else:
            texts = [body.prompt]
        prompts = [served.text_prompt(p) for p in texts]
        configs = [_config(body, body.max_tokens, i) for _ in prompts for i in range(body.n)]
        expanded = [p for p in prompts for _ in range(body.n)]
        generation = served.start(expanded, configs, body.logprobs, body.ignore_eos)
        formatter = CompletionFormatter(served, body, sum(map(len, prompts)))
        return await respond(request, generation, body.stream, formatter)

    app.state.served = served
    app.state.metrics = metrics
    return app


def _config(body: api.ChatCompletionRequest | api.CompletionRequest, max_tokens, index: int):
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    return GenerationConfig(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        repetition_penalty=body.repetition_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        max_tokens=max_tokens,
        # Each of the n choices gets its own stream of random numbers.
        seed=None if body.seed is None else body.seed + index,
        stop=stop,
    )


async def _sse(events: AsyncIterator) -> AsyncIterator[str]:
    async for event in events:
        yield f"data: {event}\n\n"
    yield "data: [DONE]\n\n"


def _error_event(out) -> str:
    status = 503 if out.error_kind == "overloaded" else 500
    return json.dumps(error_body(status, out.error, code=out.error_kind))


def _finish_reason(reason: str | None) -> str | None:
    return "stop" if reason == "abort" else reason


class ChatFormatter:
    """Chat completion responses and chunks."""

    def __init__(self, served: ServedModel, body: api.ChatCompletionRequest, prompt_tokens: int):
        self.served = served
        self.body = body
        self.prompt_tokens = prompt_tokens
        self.id = f"chatcmpl-{uuid.uuid4().hex}"

    def logprobs(self, entries: list[TokenLogprob]) -> api.ChoiceLogprobs | None:
        if not self.body.logprobs:
            return None
        return api.ChoiceLogprobs(content=[self._entry(e) for e in entries])

    def _entry(self, entry: TokenLogprob) -> api.TokenLogprobContent:
        served = self.served
        top = [
            api.TopLogprob(token=served.token_text(i), logprob=lp, bytes=served.token_bytes(i))
            for i, lp in entry.top
        ]
        return api.TokenLogprobContent(
            token=served.token_text(entry.token_id),
            logprob=entry.logprob,
            bytes=served.token_bytes(entry.token_id),
            top_logprobs=top,
        )

    def usage(self, generation: Generation) -> api.Usage:
        completion = sum(len(s.generated) for s in generation.sequences)
        return api.Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
        )

    async def collect(self, generation: Generation) -> AsyncIterator:
        n = len(generation.sequences)
        texts, reasons = [""] * n, [None] * n
        logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
        async for index, out in generation.outputs():
            if out.error is not None and out.error_kind != "cancelled":
                yield APIError(503 if out.error_kind == "overloaded" else 500, out.error)
                return
            texts[index] += out.text
            logprobs[index] += out.logprobs
            reasons[index] = _finish_reason(out.finish_reason) or reasons[index]
        choices = [
            api.ChatChoice(
                index=i,
                message=api.AssistantMessage(content=texts[i]),
                logprobs=self.logprobs(logprobs[i]),
                finish_reason=reasons[i],
            )
            for i in range(n)
        ]
        model = self.served.name
        yield api.ChatCompletion(
            id=self.id, model=model, choices=choices, usage=self.usage(generation)
        )

    async def events(self, generation: Generation) -> AsyncIterator[str]:
        def chunk(choices: list[api.ChatChunkChoice], usage: api.Usage | None = None) -> str:
            return api.ChatCompletionChunk(
                id=self.id, model=self.served.name, choices=choices, usage=usage
            ).model_dump_json(exclude_none=True)

        for i in range(len(generation.sequences)):
            delta = api.ChatDelta(role="assistant", content="")
            yield chunk([api.ChatChunkChoice(index=i, delta=delta)])
        async for index, out in generation.outputs():
            if out.error is not None and out.error_kind != "cancelled":
                yield _error_event(out)
                return
            if out.text or out.finish_reason or out.logprobs:
                choice = api.ChatChunkChoice(
                    index=index,
                    delta=api.ChatDelta(content=out.text or None),
                    logprobs=self.logprobs(out.logprobs),
                    finish_reason=_finish_reason(out.finish_reason),
                )
                yield chunk([choice])
        options = self.body.stream_options
        if options is not None and options.include_usage:
            yield chunk([], self.usage(generation))


class CompletionFormatter:
    """Text completion responses and chunks."""

    def __init__(self, served: ServedModel, body: api.CompletionRequest, prompt_tokens: int):
        self.served = served
        self.body = body
        self.prompt_tokens = prompt_tokens
        self.id = f"cmpl-{uuid.uuid4().hex}"

    def logprobs(self, entries: list[TokenLogprob], offset: int) -> api.CompletionLogprobs | None:
        if self.body.logprobs is None:
            return None
        tokens = [self.served.token_text(e.token_id) for e in entries]
        offsets = []
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        return api.CompletionLogprobs(
            tokens=tokens,
            token_logprobs=[e.logprob for e in entries],
            top_logprobs=[{self.served.token_text(i): lp for i, lp in e.top} for e in entries],
            text_offset=offsets,
        )

    def usage(self, generation: Generation) -> api.Usage:
        completion = sum(len(s.generated) for s in generation.sequences)
        return api.Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
        )

    def prefix(self, index: int) -> str:
        """The prompt text when `echo` asks for it."""
        if not self.body.echo:
            return ""
        prompt = self.body.prompt
        if isinstance(prompt, list) and isinstance(prompt[0], str):
            return str(prompt[index // self.body.n])
        if isinstance(prompt, list):
            return self.served.tokenizer.decode([int(t) for t in prompt])
        return prompt

    async def collect(self, generation: Generation) -> AsyncIterator:
        n = len(generation.sequences)
        texts = [self.prefix(i) for i in range(n)]
        starts = [len(t) for t in texts]
        reasons: list[str | None] = [None] * n
        logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
        async for index, out in generation.outputs():
            if out.error is not None and out.error_kind != "cancelled":
                yield APIError(503 if out.error_kind == "overloaded" else 500, out.error)
                return
            texts[index] += out.text
            logprobs[index] += out.logprobs
            reasons[index] = _finish_reason(out.finish_reason) or reasons[index]
        choices = [
            api.CompletionChoice(
                index=i,
                text=texts[i],
                logprobs=self.logprobs(logprobs[i], starts[i]),
                finish_reason=reasons[i],
            )
            for i in range(n)
        ]
        model = self.served.name
        yield api.Completion(id=self.id, model=model, choices=choices, usage=self.usage(generation))

    async def events(self, generation: Generation) -> AsyncIterator[str]:
        def chunk(choices: list[api.CompletionChoice], usage: api.Usage | None = None) -> str:
            return api.Completion(
                id=self.id, model=self.served.name, choices=choices, usage=usage
            ).model_dump_json(exclude_none=True)

        offsets = [0] * len(generation.sequences)
        for i in range(len(generation.sequences)):
            if self.prefix(i):
                offsets[i] = len(self.prefix(i))
                yield chunk([api.CompletionChoice(index=i, text=self.prefix(i))])
        async for index, out in generation.outputs():
            if out.error is not None and out.error_kind != "cancelled":
                yield _error_event(out)
                return
            if out.text or out.finish_reason or out.logprobs:
                choice = api.CompletionChoice(
                    index=index,
                    text=out.text,
                    logprobs=self.logprobs(out.logprobs, offsets[index]),
                    finish_reason=_finish_reason(out.finish_reason),
                )
                offsets[index] += len(out.text)
                yield chunk([choice])
        options = self.body.stream_options
        if options is not None and options.include_usage:
            yield chunk([], self.usage(generation))
