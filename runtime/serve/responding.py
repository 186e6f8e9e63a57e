"""What `/v1/chat/completions` and `/v1/completions` share: model check, sampling settings,
disconnect watching, metrics, and the streamed or collected response."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..generation_config import GenerationConfig
from ..sequence import TokenLogprob
from . import protocol as api
from .errors import APIError, error_body
from .metrics import ServerMetrics
from .service import Generation, ServedModel


def check_request(
    served: ServedModel, body: api.ChatCompletionRequest | api.CompletionRequest, lenient: bool
) -> None:
    """Refuse unsupported and unknown fields (400, see `protocol.check_fields`) and a `model`
    that names anything but the served model (404; none at all is fine)."""
    api.check_fields(body, lenient)
    name = body.model
    if name not in (None, "", served.name):
        raise APIError(
            404,
            f"the model {name!r} does not exist; this server serves {served.name!r}",
            "model",
            code="model_not_found",
        )


def generation_config(
    body: api.ChatCompletionRequest | api.CompletionRequest, max_tokens, index: int
) -> GenerationConfig:
    """The sampling settings of choice `index` of a request."""
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    bias = {int(token): value for token, value in (body.logit_bias or {}).items()}
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
        logit_bias=bias or None,
        response_format=_response_format(getattr(body, "response_format", None)),
        **_tools(body),
    )


def _tools(body) -> dict:
    """A chat request's tools, tool choice and parallel_tool_calls as `GenerationConfig`
    fields."""
    if not isinstance(body, api.ChatCompletionRequest):
        return {}
    tools = body.tools
    return {
        "tools": None if tools is None else [t.model_dump(exclude_none=True) for t in tools],
        "tool_choice": body.tool_choice,
        "parallel_tool_calls": body.parallel_tool_calls,
    }


def _response_format(requested) -> dict | None:
    """OpenAI's `response_format` as `GenerationConfig` takes it."""
    if isinstance(requested, api.JSONSchemaFormat):
        return {"type": "json_schema", "schema": requested.json_schema.json_schema}
    if isinstance(requested, api.JSONObjectFormat):
        return {"type": "json_object"}
    return None


@dataclasses.dataclass
class Gathered:
    """Every choice's whole answer, for a response that is not streamed."""

    texts: list[str]
    logprobs: list[list[TokenLogprob]]
    finish_reasons: list[str | None]


class Formatter:
    """Turns a generation's outputs into one response (`collect`) or its chunks (`events`);
    subclasses say how, per endpoint."""

    id_prefix = "cmpl"

    def __init__(self, served: ServedModel, body, prompt_tokens: int):
        self.served = served
        self.body = body
        self.prompt_tokens = prompt_tokens
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"

    def usage(self, generation: Generation) -> api.Usage:
        completion = sum(len(s.generated) for s in generation.sequences)
        cached = generation.sequences[0].num_reused if generation.sequences else 0
        return api.Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
            prompt_tokens_details=api.PromptTokensDetails(cached_tokens=cached),
        )

    async def gather(self, generation: Generation, texts: list[str]) -> Gathered | APIError:
        """Each choice's text (appended to `texts`), logprobs and finish reason, or the error
        that ended the generation."""
        n = len(generation.sequences)
        gathered = Gathered(texts, [[] for _ in range(n)], [None] * n)
        async for index, out in generation.outputs():
            if out.error is not None and out.error_kind != "cancelled":
                return APIError(503 if out.error_kind == "overloaded" else 500, out.error)
            gathered.texts[index] += out.text
            gathered.logprobs[index] += out.logprobs
            reason = _finish_reason(out.finish_reason)
            gathered.finish_reasons[index] = reason or gathered.finish_reasons[index]
        return gathered


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
    generation: Generation,
    watcher: asyncio.Task,
    stream,
    prompt_tokens: int,
    metrics: ServerMetrics,
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
        metrics.observe(generation.first_token_seconds, time.perf_counter() - generation.started)


async def respond(
    request: Request,
    generation: Generation,
    stream: bool,
    formatter,
    metrics: ServerMetrics,
):
    """Stream server-sent events, or collect everything into one JSON response."""
    watcher = watch_disconnect(request, generation)
    try:
        await generation.admitted()
    except BaseException:
        watcher.cancel()
        generation.cancel()
        raise
    stream_fn = formatter.events if stream else formatter.collect
    events = run(generation, watcher, stream_fn, formatter.prompt_tokens, metrics)
    if stream:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(_sse(events), media_type="text/event-stream", headers=headers)
    result = [item async for item in events][-1]
    if isinstance(result, APIError):
        raise result
    return result


async def _sse(events: AsyncIterator) -> AsyncIterator[str]:
    """Each event as a `data:` line, then `data: [DONE]`."""
    async for event in events:
        yield f"data: {event}\n\n"
    yield "data: [DONE]\n\n"


def _error_event(out) -> str:
    """The error body sent as the last event when a stream fails part-way."""
    status = 503 if out.error_kind == "overloaded" else 500
    return json.dumps(error_body(status, out.error, code=out.error_kind))


def _finish_reason(reason: str | None) -> str | None:
    """OpenAI has no `abort` (a cancelled sequence): report it as `stop`."""
    return "stop" if reason == "abort" else reason
