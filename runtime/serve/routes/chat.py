"""`/v1/chat/completions`: chat messages in, an assistant message (or chunks of one) out."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from ...sequence import TokenLogprob
from .. import protocol as api
from ..errors import APIError
from ..responding import (
    Formatter,
    _error_event,
    _finish_reason,
    check_request,
    generation_config,
    respond,
)
from ..service import Generation
from . import ERROR_RESPONSES, Lenient, Metrics, Served

router = APIRouter()


@router.post("/v1/chat/completions", response_model=api.ChatCompletion, responses=ERROR_RESPONSES)
async def chat_completions(
    body: api.ChatCompletionRequest,
    request: Request,
    served: Served,
    metrics: Metrics,
    lenient: Lenient,
):
    check_request(served, body, lenient)
    if body.top_logprobs and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs to be true", "top_logprobs")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    prompt = served.chat_prompt(messages)
    max_tokens = body.max_completion_tokens
    if max_tokens is None:
        max_tokens = body.max_tokens
    configs = [generation_config(body, max_tokens, i) for i in range(body.n)]
    top = (body.top_logprobs or 0) if body.logprobs else None
    generation = await served.start([prompt] * body.n, configs, top, body.ignore_eos)
    formatter = ChatFormatter(served, body, len(prompt))
    return await respond(request, generation, body.stream, formatter, metrics)


class ChatFormatter(Formatter):
    """Chat completion responses and chunks."""

    id_prefix = "chatcmpl"
    body: api.ChatCompletionRequest

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

    async def collect(self, generation: Generation) -> AsyncIterator:
        gathered = await self.gather(generation, [""] * len(generation.sequences))
        if isinstance(gathered, APIError):
            yield gathered
            return
        choices = [
            api.ChatChoice(
                index=i,
                message=api.AssistantMessage(content=text),
                logprobs=self.logprobs(gathered.logprobs[i]),
                finish_reason=gathered.finish_reasons[i],
            )
            for i, text in enumerate(gathered.texts)
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
