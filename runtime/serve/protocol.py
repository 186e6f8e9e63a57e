"""Request and response bodies of the OpenAI API subset we serve, as pydantic models.

Every field is either implemented or refused: known fields are checked strictly enough that a
bad value is a 400 naming the field, never a failure deeper down; fields of the OpenAI API we do
not implement are refused with the reason (`UNSUPPORTED`), and unknown fields with a 400 naming
them unless the server runs with `--lenient` (see `check_fields`).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .errors import APIError

MAX_STOP = 16
MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_SEED = 2**63 - 1

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
StopStrings = str | Annotated[list[str], Field(max_length=MAX_STOP)] | None
# Token id (as a string, JSON keys being strings) -> bias added to its logit.
LogitBias = dict[
    Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], Annotated[float, Field(ge=-100, le=100)]
]

# Fields of OpenAI's request bodies this server does not implement: the reason, and the values
# that ask for nothing (accepted).
UNSUPPORTED: dict[str, tuple[str, tuple[Any, ...]]] = {
    "functions": ("the deprecated functions API is not implemented; use tools", (None, [])),
    "function_call": (
        "the deprecated functions API is not implemented; use tool_choice",
        (None, "none"),
    ),
    "audio": ("this server generates text only", (None,)),
    "modalities": ("this server generates text only", (None, ["text"])),
    "prediction": ("predicted outputs are not implemented", (None,)),
    "reasoning_effort": ("the model has no reasoning setting", (None,)),
    "verbosity": ("the model has no verbosity setting", (None,)),
    "web_search_options": ("this server does not search the web", (None,)),
    "service_tier": ("this server has one service tier", (None, "auto", "default")),
    "store": ("this server stores no completions", (None, False)),
    "metadata": ("this server stores no completions to tag", (None, {})),
    "prompt_cache_key": ("this server has no prompt cache to route", (None,)),
    "suffix": ("completions with a suffix (insertion) are not implemented", (None, "")),
    "best_of": ("best_of is not implemented; use n", (None, 1)),
}


def check_fields(body: BaseModel, lenient: bool) -> None:
    """Refuse (400, naming the field) an unsupported field that asks for something, and an
    unknown field unless `lenient`."""
    for name, value in (body.model_extra or {}).items():
        if name in UNSUPPORTED:
            reason, accepted = UNSUPPORTED[name]
            if any(value == ok and type(value) is type(ok) for ok in accepted):
                continue
            raise APIError(400, f"{name} is not supported: {reason}", name, "unsupported_field")
        if not lenient:
            raise APIError(
                400,
                f"unknown field {name!r}: this server does not implement it; remove it, or start "
                "mlc serve with --lenient to ignore unknown fields",
                name,
                "unknown_field",
            )


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Request(BaseModel):
    # Extra fields are kept for `check_fields` to refuse.
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Probability | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, Field(ge=0.01, le=100.0)] | None = None
    stop: StopStrings = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    logit_bias: LogitBias | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = False  # an extension (as in vLLM): generate through EOS, for benchmarks


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContentPart(_Strict):
    type: Literal["text"]
    text: str


FunctionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class FunctionCall(_Strict):
    name: FunctionName
    arguments: str  # JSON text, as the model wrote it


class MessageToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDefinition(_Strict):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema of the arguments object
    strict: bool | None = None  # the grammar always applies: arguments match either way


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # which call a tool message answers

    @field_validator("tool_calls", "tool_call_id")
    @classmethod
    def _only_in_its_role(cls, value, info: ValidationInfo):
        role = {"tool_calls": "assistant", "tool_call_id": "tool"}[info.field_name]
        if value is not None and info.data.get("role") != role:
            raise ValueError(f"only {role} messages carry {info.field_name}")
        return value

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class TextFormat(_Strict):
    type: Literal["text"]


class JSONObjectFormat(_Strict):
    type: Literal["json_object"]


class JSONSchema(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    # JSON Schema's own keyword is "schema"; the alias keeps pydantic's BaseModel.schema free.
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None  # the grammar always applies: output matches either way


class JSONSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JSONSchema


ResponseFormat = Annotated[
    TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")
]


class ChatCompletionRequest(_Request):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    # "none", "auto", "required" or {"type": "function", "function": {"name": ...}}: checked
    # by `tool_calling.tool_request`, whose messages name the choices.
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_completion_tokens: Annotated[int, Field(ge=0)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None


class CompletionRequest(_Request):
    prompt: (
        str
        | Annotated[list[int], Field(min_length=1)]
        | Annotated[list[str], Field(min_length=1, max_length=MAX_N)]
    )
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    echo: bool = False


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # prompt tokens whose KV came from the prefix cache


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobContent(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobContent]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ResponseToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class FunctionDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mlc"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
