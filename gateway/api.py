"""The gateway's HTTP API (FastAPI): the OpenAI API's `GET /v1/models`, `POST /v1/completions`
and `POST /v1/chat/completions`, streamed as server-sent events or not.

A request is checked in this order, each refusal OpenAI-shaped (`gateway.errors`):
401 (no key, unknown or revoked), 400 (malformed JSON, a bad or unsupported field), 404 (a
model this gateway does not serve), 400 (prompt and max_tokens beyond the model's context),
402 (the key spent its budget), 429 (every generation slot busy), 503 (no route through the
swarm), 402 (the request's reservation does not fit what the key has left). Then it generates
(`gateway.engine`) and answers with `usage` (its `cost` in stake-token base units) and the
headers `x-stakeswarm-cost` (base units) and `x-stakeswarm-cost-tokens` (e.g. `0.0012 SWARM`);
a stream ends with `data: [DONE]`, after a usage chunk when `stream_options.include_usage`.
A client that disconnects stops its generation after the step in progress; its key is
charged what was paid.

`create_app` takes extra routers (the dashboard, mounted at `/`): this app leaves `/` free.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.accounts import Accounts, KeyRef
from gateway.config import GatewayConfig
from gateway.engine import Delta, Done, Engine, Failed, Finished, Generation
from gateway.errors import BadRequest, GatewayError, ModelNotFound
from gateway.keys import reservation
from gateway.openai_types import (
    ChatCompletionRequest,
    CompletionRequest,
    Decoding,
    chat_messages,
    completion_prompt,
    decoding,
    parse,
    usage,
)
from ledger.units import TokenUnits

COST_HEADER = "x-stakeswarm-cost"  # what the request cost, in stake-token base units
COST_TOKENS_HEADER = "x-stakeswarm-cost-tokens"  # the same in tokens, with the symbol


@dataclass(frozen=True)
class ApiParts:
    """What the routes use."""

    config: GatewayConfig
    accounts: Accounts  # keys, budgets, charges
    engine: Engine  # generations through the swarm
    units: TokenUnits  # the stake token, for the cost header


def create_app(parts: ApiParts, routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The gateway's FastAPI app, with `routers` included as they are (e.g. the dashboard's,
    at `/`)."""
    app = FastAPI(title="stakeswarm gateway", docs_url="/v1/docs", openapi_url="/v1/openapi.json")
    app.include_router(_openai_router(parts))
    for router in routers:
        app.include_router(router)

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if not request.url.path.startswith("/v1"):
            return await http_exception_handler(request, exc)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        body = {"error": {"message": str(exc.detail), "type": kind, "param": None, "code": None}}
        return JSONResponse(body, status_code=exc.status_code)

    return app


def _openai_router(parts: ApiParts) -> APIRouter:
    router = APIRouter(prefix="/v1")
    config, accounts, engine = parts.config, parts.accounts, parts.engine
    tokenizer = engine.tokenizer

    async def authenticate(request: Request) -> KeyRef:
        return await run_in_threadpool(accounts.authenticate, request.headers.get("authorization"))

    def model_entry() -> dict[str, Any]:
        return {
            "id": config.served_model,
            "object": "model",
            "created": 0,
            "owned_by": "stakeswarm",
        }

    @router.get("/models")
    async def list_models(request: Request) -> dict[str, Any]:
        await authenticate(request)
        return {"object": "list", "data": [model_entry()]}

    @router.get("/models/{model:path}")
    async def get_model(model: str, request: Request) -> dict[str, Any]:
        await authenticate(request)
        if model != config.served_model:
            raise ModelNotFound(f"the model {model!r} does not exist", param="model")
        return model_entry()

    @router.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        key = await authenticate(request)
        chat = parse(ChatCompletionRequest, await _json(request))
        _check_model(chat.model, config)
        decode = decoding(chat, max_n=config.max_n)
        ids = _chat_ids(tokenizer, chat_messages(chat))
        return await _serve(parts, request, key, ids, decode, chat=True)

    @router.post("/completions")
    async def completions(request: Request) -> Response:
        key = await authenticate(request)
        completion = parse(CompletionRequest, await _json(request))
        _check_model(completion.model, config)
        decode = decoding(completion, max_n=config.max_n)
        ids = tokenizer(completion_prompt(completion), return_tensors="pt")["input_ids"]
        return await _serve(parts, request, key, ids, decode, chat=False)

    return router


async def _json(request: Request) -> object:
    body = await request.body()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None


def _check_model(model: str, config: GatewayConfig) -> None:
    if model != config.served_model:
        raise ModelNotFound(
            f"the model {model!r} does not exist; this gateway serves {config.served_model!r}",
            param="model",
        )


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> Any:
    """Token ids [1, tokens] of the messages through the model's chat template."""
    from jinja2 import TemplateError

    if not getattr(tokenizer, "chat_template", None):
        raise BadRequest("this model has no chat template: use /v1/completions", param="messages")
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except TemplateError as exc:
        raise BadRequest(f"the model's chat template refused the messages: {exc}",
                         param="messages") from None  # fmt: skip
    return tokenizer(str(text), add_special_tokens=False, return_tensors="pt")["input_ids"]


def _max_new_tokens(parts: ApiParts, prompt_tokens: int, decode: Decoding) -> int:
    config, context = parts.config, parts.engine.context
    if prompt_tokens < 1:
        raise BadRequest("the prompt is empty", param="prompt")
    if decode.max_tokens is not None and decode.max_tokens > config.max_tokens:
        raise BadRequest(
            f"max_tokens must be at most {config.max_tokens} on this gateway", param="max_tokens"
        )
    room = context - prompt_tokens
    wanted = decode.max_tokens if decode.max_tokens is not None else min(config.max_tokens, room)
    if wanted > room or room < 1:
        raise BadRequest(
            f"the model's context is {context} tokens; the prompt has {prompt_tokens}, "
            f"{wanted} more were asked for",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return wanted


async def _serve(
    parts: ApiParts, request: Request, key: KeyRef, ids: Any, decode: Decoding, *, chat: bool
) -> Response:
    """Admit, reserve, start the generation, and answer (streamed or not)."""
    accounts, engine = parts.accounts, parts.engine
    prompt_tokens = int(ids.shape[1])
    max_new = _max_new_tokens(parts, prompt_tokens, decode)
    await run_in_threadpool(accounts.check, key)  # a spent key: refused before anything else
    with engine.slot() as keep:
        price = await run_in_threadpool(engine.price)
        amount = reservation(
            prompt_tokens=prompt_tokens, max_tokens=max_new, choices=decode.n, price=price
        )
        hold = await run_in_threadpool(accounts.reserve, key, amount)
        run = Generation(
            input_ids=ids,
            decoding=decode,
            max_new_tokens=max_new,
            reserved=amount,
            headroom=functools.partial(accounts.headroom, hold),
            loop=asyncio.get_running_loop(),
        )

        def settle(cost: int, prompt: int, completion: int) -> None:
            accounts.settle(hold, cost=cost, prompt_tokens=prompt, completion_tokens=completion)

        try:
            engine.start(run, settle)
        except BaseException:
            accounts.release(hold)
            raise
        keep()
    answer = _Answer(parts, run, chat=chat)
    watcher = asyncio.create_task(_watch_disconnect(request, run))
    try:
        first = await run.next_event()
    except BaseException:
        run.cancel.set()
        watcher.cancel()
        raise
    if isinstance(first, Failed):
        watcher.cancel()
        return answer.error(first)
    if decode.stream:
        return StreamingResponse(
            answer.stream(first, watcher),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    try:
        return await answer.whole(first)
    finally:
        watcher.cancel()


async def _watch_disconnect(request: Request, run: Generation) -> None:
    """Cancel `run` when its client goes away."""
    while not run.done.is_set():
        message = await request.receive()
        if message["type"] == "http.disconnect":
            run.cancel.set()
            return


class _Answer:
    """The OpenAI-shaped answer of one generation, whole or as chunks."""

    def __init__(self, parts: ApiParts, run: Generation, *, chat: bool) -> None:
        self.parts = parts
        self.run = run
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = parts.config.served_model

    def _headers(self, cost: int) -> dict[str, str]:
        return {COST_HEADER: str(cost), COST_TOKENS_HEADER: self.parts.units.show(cost)}

    def error(self, failed: Failed) -> Response:
        error = failed.error
        return JSONResponse(
            error.body(), status_code=error.status, headers=self._headers(failed.cost)
        )

    async def whole(self, event: Any) -> Response:
        n = self.run.decoding.n
        texts = [""] * n
        reasons: list[str | None] = [None] * n
        while True:
            if isinstance(event, Delta):
                texts[event.index] += event.text
            elif isinstance(event, Finished):
                reasons[event.index] = event.reason
            elif isinstance(event, Failed):
                return self.error(event)
            elif isinstance(event, Done):
                break
            event = await self.run.next_event()
        if self.chat:
            choices = [
                {"index": i, "message": {"role": "assistant", "content": texts[i]},
                 "logprobs": None, "finish_reason": reasons[i]}
                for i in range(n)
            ]  # fmt: skip
        else:
            choices = [
                {"index": i, "text": texts[i], "logprobs": None, "finish_reason": reasons[i]}
                for i in range(n)
            ]
        body = {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage(event.prompt_tokens, event.completion_tokens, event.cost),
        }
        return JSONResponse(body, headers=self._headers(event.cost))

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.run.decoding.include_usage:
            body["usage"] = None
        body.update(extra)
        return f"data: {json.dumps(body)}\n\n"

    def _choice(self, index: int, text: str | None, reason: str | None, role: bool = False) -> dict:
        if not self.chat:
            return {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
        delta: dict[str, str] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}

    async def stream(self, event: Any, watcher: asyncio.Task[None]) -> AsyncIterator[str]:
        run = self.run
        try:
            if self.chat:
                yield self._chunk(
                    [self._choice(i, "", None, role=True) for i in range(run.decoding.n)]
                )
            while True:
                if isinstance(event, Delta):
                    yield self._chunk([self._choice(event.index, event.text, None)])
                elif isinstance(event, Finished):
                    text = None if self.chat else ""
                    yield self._chunk([self._choice(event.index, text, event.reason)])
                elif isinstance(event, Failed):
                    yield f"data: {json.dumps(event.error.body())}\n\n"
                    return
                elif isinstance(event, Done):
                    if run.decoding.include_usage:
                        yield self._chunk(
                            [],
                            usage=usage(event.prompt_tokens, event.completion_tokens, event.cost),
                        )
                    yield "data: [DONE]\n\n"
                    return
                event = await run.next_event()
        finally:
            run.cancel.set()  # a no-op once it ended; stops it when the client went away
            watcher.cancel()
