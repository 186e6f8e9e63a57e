"""`/v1/chat/completions`: chat messages in, an assistant message (or chunks of one) out."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from ...generation_config import GenerationConfig
from ...sequence import TokenLogprob
from ...tool_calling import Delta, ToolCallStream, ToolRequest
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
    max_tokens = body.max_completion_tokens
    if max_tokens is None:
        max_tokens = body.max_tokens
    configs = [generation_config(body, max_tokens, i) for i in range(body.n)]
    tools = tool_request(configs[0])
    prompt = served.chat_prompt([message_dict(m) for m in body.messages], tools)
    top = (body.top_logprobs or 0) if body.logprobs else None
    generation = await served.start([prompt] * body.n, configs, top, body.ignore_eos)
    formatter = ChatFormatter(served, body, len(prompt), tools)
    return await respond(request, generation, body.stream, formatter, metrics)


def message_dict(message: api.ChatMessage) -> dict:
    """A request message as `ChatModule` keeps them (OpenAI's shape, text content)."""
    out: dict = {"role": message.role, "content": message.text()}
    if message.tool_calls:
        out["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def tool_request(config: GenerationConfig) -> ToolRequest | None:
    """The request's tools and tool choice, checked (400 naming the field)."""
    try:
        return config.tool_request()
    except ValueError as err:
        param = "tool_choice" if "tool_choice" in str(err) else "tools"
        raise APIError(400, str(err), param) from err


class ChatFormatter(Formatter):
    """Chat completion responses and chunks."""

    id_prefix = "chatcmpl"
    body: api.ChatCompletionRequest

    def __init__(self, served, body, prompt_tokens: int, tools: ToolRequest | None):
        super().__init__(served, body, prompt_tokens)
        self.tools = tools

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

    def tool_stream(self) -> ToolCallStream | None:
        """A parser of one answer's tool calls, when the request offers tools."""
        return None if self.tools is None else self.served.tools.stream()

    async def collect(self, generation: Generation) -> AsyncIterator:
        gathered = await self.gather(generation, [""] * len(generation.sequences))
        if isinstance(gathered, APIError):
            yield gathered
            return
        choices = []
        for i, text in enumerate(gathered.texts):
            message = api.AssistantMessage(content=text)
            reason = gathered.finish_reasons[i]
            stream = self.tool_stream()
            if stream is not None:
                stream.feed(text)
                stream.finish()
                message.content = stream.content or None
                if stream.calls:
                    message.tool_calls = [
                        api.ResponseToolCall.model_validate(c.to_openai()) for c in stream.calls
                    ]
                    reason = "tool_calls" if reason == "stop" else reason
            choices.append(
                api.ChatChoice(
                    index=i,
                    message=message,
                    logprobs=self.logprobs(gathered.logprobs[i]),
                    finish_reason=reason,
                )
            )
        model = self.served.name
        yield api.ChatCompletion(
            id=self.id, model=model, choices=choices, usage=self.usage(generation)
        )

    async def events(self, generation: Generation) -> AsyncIterator[str]:
        def chunk(choices: list[api.ChatChunkChoice], usage: api.Usage | None = None) -> str:
            return api.ChatCompletionChunk(
                id=self.id, model=self.served.name, choices=choices, usage=usage
            ).model_dump_json(exclude_none=True)

        streams = [self.tool_stream() for _ in generation.sequences]
        for i in range(len(generation.sequences)):
            delta = api.ChatDelta(role="assistant", content="")
            yield chunk([api.ChatChunkChoice(index=i, delta=delta)])
        async for index, out in generation.outputs():
            if out.error is not None and out.error_kind != "cancelled":
                yield _error_event(out)
                return
            reason = _finish_reason(out.finish_reason)
            delta = api.ChatDelta(content=out.text or None)
            stream = streams[index]
            if stream is not None:
                parsed = stream.feed(out.text)
                if out.finish_reason is not None:
                    rest = stream.finish()
                    parsed.content += rest.content
                    parsed.calls += rest.calls
                    if stream.calls and reason == "stop":
                        reason = "tool_calls"
                delta = _chat_delta(parsed)
            if delta.content or delta.tool_calls or reason or out.logprobs:
                choice = api.ChatChunkChoice(
                    index=index,
                    delta=delta,
                    logprobs=self.logprobs(out.logprobs),
                    finish_reason=reason,
                )
                yield chunk([choice])
        options = self.body.stream_options
        if options is not None and options.include_usage:
            yield chunk([], self.usage(generation))


def _chat_delta(delta: Delta) -> api.ChatDelta:
    """Parsed text and tool-call pieces as an OpenAI chunk's delta."""
    calls = [
        api.ToolCallDelta(
            index=c.index,
            id=c.id,
            type="function" if c.id is not None else None,
            function=api.FunctionDelta(name=c.name, arguments=c.arguments),
        )
        for c in delta.calls
    ]
    return api.ChatDelta(content=delta.content or None, tool_calls=calls or None)
