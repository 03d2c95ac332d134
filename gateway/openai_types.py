"""The OpenAI API's request and response shapes, at the gateway's edge (pydantic), and the
checks that turn a request into what the engine runs (`Decoding`).

Requests are validated field by field; a field the gateway does not support with a value that
would change the answer (`logprobs`, `tools`, `echo`, penalties, ...) is refused with a 400
naming it, rather than silently ignored. Fields that change nothing here (`user`, `metadata`,
`store`, a `text` response format, ...) are accepted and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import BadRequest

MAX_STOP = 4  # stop sequences per request (OpenAI's limit)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False  # a last chunk with the usage (and no choices)


class _Common(BaseModel):
    """Fields both endpoints take."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # newer clients' max_tokens
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # refused unless they change nothing
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    best_of: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    def text(self, index: int) -> str:
        """The message's text (text parts joined); a 400 for parts that are not text."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(
                    "only text content parts are supported", param=f"messages.{index}.content"
                )
            texts.append(part["text"])
        return "".join(texts)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Common):
    prompt: str | list[str]
    echo: bool | None = None
    suffix: str | None = None


@dataclass(frozen=True)
class Decoding:
    """How to generate, checked: what the engine runs."""

    max_tokens: int | None  # None: as many as the context leaves (up to the gateway's cap)
    temperature: float  # 0: greedy
    top_p: float  # nucleus mass (1: all)
    n: int  # choices
    stop: tuple[str, ...]  # the text ends before the first of these
    seed: int | None  # the sampler's seed (per request)
    stream: bool
    include_usage: bool  # a last stream chunk with the usage


def parse(model: type[_Common], body: object) -> Any:
    """`body` (decoded JSON) as `model`; a 400 naming the first field at fault."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        message = f"{param}: {first.get('msg')}" if param else str(exc)
        raise BadRequest(message, param=param) from None


def decoding(request: _Common, *, max_n: int) -> Decoding:
    """The checked decoding of `request`: 400 for what the gateway does not support."""
    _refuse_unsupported(request)
    if isinstance(request, CompletionRequest):
        if request.echo:
            raise BadRequest("echo is not supported", param="echo")
        if request.suffix:
            raise BadRequest("suffix is not supported", param="suffix")
    n = request.n or 1
    if n > max_n:
        raise BadRequest(f"n must be at most {max_n} on this gateway", param="n")
    stop = request.stop
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stops) > MAX_STOP:
        raise BadRequest(f"at most {MAX_STOP} stop sequences", param="stop")
    if any(not s for s in stops):
        raise BadRequest("a stop sequence must not be empty", param="stop")
    if request.max_tokens is not None and request.max_completion_tokens is not None:
        raise BadRequest(
            "give max_tokens or max_completion_tokens, not both", param="max_completion_tokens"
        )
    return Decoding(
        max_tokens=request.max_tokens or request.max_completion_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        n=n,
        stop=stops,
        seed=request.seed,
        stream=bool(request.stream),
        include_usage=bool(request.stream and request.stream_options is not None
                           and request.stream_options.include_usage),
    )  # fmt: skip


def _refuse_unsupported(request: _Common) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            raise BadRequest(f"{name} is not supported (only 0)", param=name)
    if request.logit_bias:
        raise BadRequest("logit_bias is not supported", param="logit_bias")
    if request.logprobs or request.top_logprobs:
        raise BadRequest("logprobs are not supported", param="logprobs")
    if request.best_of not in (None, 1):
        raise BadRequest("best_of is not supported", param="best_of")
    if request.tools or request.functions:
        raise BadRequest("tools and functions are not supported", param="tools")
    if request.response_format and request.response_format.get("type") != "text":
        raise BadRequest("only the text response format is supported", param="response_format")


def completion_prompt(request: CompletionRequest) -> str:
    """The one prompt of a completion request (a list must hold exactly one)."""
    if isinstance(request.prompt, str):
        return request.prompt
    if len(request.prompt) != 1:
        raise BadRequest("give one prompt (a string, or a list of one string)", param="prompt")
    return request.prompt[0]


def chat_messages(request: ChatCompletionRequest) -> list[dict[str, str]]:
    """The messages as the chat template takes them (`developer` read as `system`)."""
    return [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text(i)}
        for i, m in enumerate(request.messages)
    ]


# --- responses ----------------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int, cost: int) -> dict[str, int]:
    """OpenAI's usage object, with the request's `cost` in stake-token base units."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "cost": cost,
    }
