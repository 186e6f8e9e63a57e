"""`/v1/completions`: prompts (text, texts or token ids) in, text completions out."""

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


@router.post("/v1/completions", response_model=api.Completion, responses=ERROR_RESPONSES)
async def completions(
    body: api.CompletionRequest,
    request: Request,
    served: Served,
    metrics: Metrics,
    lenient: Lenient,
):
    check_request(served, body, lenient)
    if isinstance(body.prompt, list) and isinstance(body.prompt[0], str):
        texts: list = list(body.prompt)
    else:
        texts = [body.prompt]
    prompts = [served.text_prompt(p) for p in texts]
    configs = [generation_config(body, body.max_tokens, i) for _ in prompts for i in range(body.n)]
    expanded = [p for p in prompts for _ in range(body.n)]
    generation = await served.start(expanded, configs, body.logprobs, body.ignore_eos)
    formatter = CompletionFormatter(served, body, sum(map(len, prompts)))
    return await respond(request, generation, body.stream, formatter, metrics)


class CompletionFormatter(Formatter):
    """Text completion responses and chunks."""

    id_prefix = "cmpl"
    body: api.CompletionRequest

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
        prefixes = [self.prefix(i) for i in range(len(generation.sequences))]
        gathered = await self.gather(generation, list(prefixes))
        if isinstance(gathered, APIError):
            yield gathered
            return
        choices = [
            api.CompletionChoice(
                index=i,
                text=text,
                logprobs=self.logprobs(gathered.logprobs[i], len(prefixes[i])),
                finish_reason=gathered.finish_reasons[i],
            )
            for i, text in enumerate(gathered.texts)
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
