"""The HTTP routes: OpenAI's /v1 API, vLLM's tokenizer endpoints, health, metrics and the chat
page, on FastAPI. Each request becomes one `Sequence` per prompt and choice, handed to the
scheduler; the route then waits for their events (or streams them) while a watcher cancels the
sequences of a client that went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse

from tfllm.data import chat as chat_templates
from tfllm.server import page, responses
from tfllm.server.metrics import Metrics
from tfllm.server.responses import Choice
from tfllm.server.scheduler import Closed, QueueFull, Scheduler, Sequence
from tfllm.server.schemas import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    error_body,
    validation_message,
)
from tfllm.server.text import Codec

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A request the server refuses: an HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.param, self.extra = status, message, param, extra


@dataclasses.dataclass
class State:
    """What the routes share: the model's name and limits, its text codec and chat template."""

    name: str
    codec: Codec
    scheduler: Scheduler
    metrics: Metrics
    cache_len: int
    vocabulary_size: int
    template: chat_templates.Template
    end_of_turn: str
    shutdown_timeout: float = 30.0
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise ApiError(
                404,
                f"model {model!r} not found; this server serves {self.name!r}",
                "model",
                code="model_not_found",
            )


def create_app(state: State) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        # uvicorn has drained the connections it could; the queue may still hold sequences
        # of requests cut off by the timeout.
        if not await asyncio.to_thread(state.scheduler.close, state.shutdown_timeout):
            logger.warning("stopped with sequences still running (shutdown timeout)")

    app = FastAPI(title="tfllm", docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.middleware("http")
    async def count(request: Request, call_next):
        response = await call_next(request)
        if request.url.path.startswith("/v1/"):
            state.metrics.add(
                "requests_total", endpoint=request.url.path, status=str(response.status_code)
            )
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        kind = "invalid_request_error" if err.status < 500 else "server_error"
        headers = {"Retry-After": "1"} if err.status == 429 else None
        code = err.extra.get("code")
        return JSONResponse(
            error_body(err.message, kind, err.param, code), err.status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        message, param = validation_message(err.errors())
        return JSONResponse(error_body(message, param=param), 400)

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return page.HTML

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return state.metrics.render(*state.scheduler.depth())

    @app.get("/v1/models")
    async def models():
        model = {
            "id": state.name,
            "object": "model",
            "created": state.created,
            "owned_by": "tfllm",
            "max_model_len": state.cache_len,
        }
        return {"object": "list", "data": [model]}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return {
            "tokenizer_class": "tfllm",
            "eos_token": state.codec.eos_token,
            "bos_token": None,
            "pad_token": None,
            "chat_template": state.template.source,
            "model_max_length": state.cache_len,
        }

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        state.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "give one of prompt or messages", "prompt")
        text = body.prompt
        if body.messages is not None:
            messages = [m.model_dump() for m in body.messages]
            text = state.template.render(messages, body.add_generation_prompt)
        tokens = await asyncio.to_thread(state.codec.encode, text, body.add_special_tokens)
        return {
            "count": len(tokens),
            "max_model_len": state.cache_len,
            "tokens": tokens,
            "token_strs": None,
        }

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        state.check_model(body.model)
        _check_ids(state, body.tokens, "tokens")
        return {"prompt": await asyncio.to_thread(state.codec.decode, body.tokens)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        state.check_model(body.model)
        prompts = await asyncio.to_thread(_prompts, state, body.prompt)
        knobs = {"stops": body.stops(), "logprobs": body.logprobs, "echo": body.echo}
        sequences, events = _sequences(
            state, body, [ids for ids, _ in prompts], body.max_tokens, knobs
        )
        request_id = f"cmpl-{uuid.uuid4().hex}"
        if body.stream:
            return _stream(state, request, body, sequences, events, request_id, False)
        choices = await _gather(request, sequences, events)
        out = []
        for sequence, choice in zip(sequences, choices, strict=True):
            prompt_ids, prompt_text = prompts[sequence.choice // body.n]
            text = (prompt_text + choice.text) if body.echo else choice.text
            logprobs = None
            if body.logprobs is not None:
                starts = len(state.codec.specials.start)
                echoed = prompt_ids[starts:] if body.echo else None
                logprobs = responses.completion_logprobs(
                    state.codec, choice, body.logprobs, echoed, starts
                )
            out.append(
                {
                    "index": sequence.choice,
                    "text": text,
                    "logprobs": logprobs,
                    "finish_reason": choice.reason,
                }
            )
        pairs = zip(sequences, choices, strict=True)
        counts = responses.usage([(s.choice // body.n, c) for s, c in pairs])
        return responses.completion(request_id, state.name, out, counts)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        state.check_model(body.model)
        messages = [m.model_dump() for m in body.messages]
        text = state.template.render(messages, add_generation_prompt=True)
        ids = await asyncio.to_thread(state.codec.encode, text)
        stops = body.stops() + ([state.end_of_turn] if state.end_of_turn else [])
        top = (body.top_logprobs or 0) if body.logprobs else None
        knobs = {"stops": stops, "logprobs": top, "echo": False}
        max_tokens = body.max_completion_tokens or body.max_tokens
        sequences, events = _sequences(state, body, [ids], max_tokens, knobs)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            return _stream(state, request, body, sequences, events, request_id, True)
        choices = await _gather(request, sequences, events)
        out = [
            {
                "index": s.choice,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": responses.chat_logprobs(state.codec, c.tokens, top)
                if body.logprobs
                else None,
                "finish_reason": c.reason,
            }
            for s, c in zip(sequences, choices, strict=True)
        ]
        counts = responses.usage([(0, c) for c in choices])
        return responses.chat_completion(request_id, state.name, out, counts)

    return app


def _check_ids(state: State, ids: list[int], field: str) -> None:
    bad = [i for i in ids if not 0 <= i < state.vocabulary_size]
    if bad:
        raise ApiError(
            400, f"{field}: token id {bad[0]} is outside [0, {state.vocabulary_size})", field
        )


def _prompts(state: State, prompt) -> list[tuple[list[int], str]]:
    """The request's prompts as (ids with start ids, text): strings are tokenized, token ids
    read as they are (after the model's start ids, the prompt rule of `tfllm generate`)."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise ApiError(400, "prompt: give at least one prompt", "prompt")
    start = list(state.codec.specials.start)
    out = []
    for item in prompt:
        if isinstance(item, str):
            out.append((state.codec.encode(item), item))
        else:
            _check_ids(state, item, "prompt")
            out.append((start + list(item), state.codec.decode(item)))
    return out


def _sequences(
    state: State, body, prompts: list[list[int]], max_tokens: int | None, knobs: dict
) -> tuple[list[Sequence], asyncio.Queue]:
    """One sequence per prompt and choice, queued; refused whole when one does not fit."""
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    request_id = uuid.uuid4().hex[:12]
    sequences = []
    for p, ids in enumerate(prompts):
        limit = state.cache_len - len(ids)
        wanted = limit if max_tokens is None else max_tokens
        if wanted > limit or limit < 1:
            raise ApiError(
                400,
                f"the prompt's {len(ids)} tokens plus max_tokens {wanted} are more than the "
                f"context of {state.cache_len} tokens",
                "max_tokens",
            )
        for i in range(body.n):
            seed = body.seed + i if body.seed is not None else int(uuid.uuid4().int % 2**31)
            sampling = {
                "temperature": body.temperature,
                "top_k": min(body.top_k, state.vocabulary_size),
                "top_p": body.top_p,
                "seed": seed,
            }
            sequences.append(
                Sequence(request_id, p * body.n + i, ids, wanted, sampling, events, loop, **knobs)
            )
    try:
        state.scheduler.submit(sequences)
    except QueueFull:
        raise ApiError(429, "the server's queue is full; retry later", code="queue_full") from None
    except Closed:
        raise ApiError(503, "the server is shutting down", code="shutting_down") from None
    state.metrics.add("prompt_tokens_total", sum(len(s.ids) for s in sequences))
    return sequences, events


async def _watch(request: Request, sequences: list[Sequence]) -> None:
    """Cancels the sequences once the client has gone away."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.2)
    for sequence in sequences:
        sequence.cancelled = True


def _apply(choices: dict, event) -> None:
    kind, index = event[0], event[1]
    choice = choices[index]
    if kind == "text":
        choice.text += event[2]
        choice.tokens += event[3]
    elif kind == "prompt":
        choice.prompt = (event[2], event[3])
    elif kind == "done":
        choice.reason, choice.usage = event[2], event[3]
    elif kind == "error":
        raise ApiError(500, event[2])


async def _gather(request: Request, sequences: list[Sequence], events: asyncio.Queue):
    choices = {s.choice: Choice() for s in sequences}
    watcher = asyncio.create_task(_watch(request, sequences))
    try:
        while any(c.reason is None for c in choices.values()):
            _apply(choices, await events.get())
    finally:
        watcher.cancel()
        for sequence in sequences:
            sequence.cancelled = True  # a no-op for finished ones
    return [choices[s.choice] for s in sequences]


def _stream(
    state: State, request: Request, body, sequences, events, request_id: str, chat: bool
) -> StreamingResponse:
    async def chunks():
        choices = {s.choice: Choice() for s in sequences}
        watcher = asyncio.create_task(_watch(request, sequences))
        try:
            if chat:
                for s in sequences:
                    yield responses.sse(
                        responses.chunk(request_id, state.name, True, s.choice, None, role=True)
                    )
            while any(c.reason is None for c in choices.values()):
                event = await events.get()
                try:
                    _apply(choices, event)
                except ApiError as err:
                    yield responses.sse(error_body(err.message, "server_error"))
                    return
                kind, index = event[0], event[1]
                if kind == "text":
                    logprobs = _stream_logprobs(state, body, chat, choices[index], event[3])
                    yield responses.sse(
                        responses.chunk(
                            request_id, state.name, chat, index, event[2], None, logprobs
                        )
                    )
                elif kind == "done":
                    yield responses.sse(
                        responses.chunk(
                            request_id, state.name, chat, index, None if chat else "", event[2]
                        )
                    )
            if body.stream_options is not None and body.stream_options.include_usage:
                last = responses.chunk(request_id, state.name, chat, 0, None)
                last["choices"] = []
                key = (lambda s: s.choice // body.n) if not chat else (lambda s: 0)
                last["usage"] = responses.usage([(key(s), choices[s.choice]) for s in sequences])
                yield responses.sse(last)
            yield responses.sse("[DONE]")
        finally:
            watcher.cancel()
            for sequence in sequences:
                sequence.cancelled = True

    return StreamingResponse(
        chunks(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


def _stream_logprobs(state: State, body, chat: bool, choice: Choice, tokens: list):
    if not tokens:
        return None
    if chat:
        return responses.chat_logprobs(state.codec, tokens, body.top_logprobs or 0)
    return responses.completion_logprobs(state.codec, Choice(tokens=tokens), body.logprobs, None, 0)
