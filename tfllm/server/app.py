"""The HTTP routes: OpenAI's /v1 API, vLLM's tokenizer endpoints, health, metrics and the chat
page, on FastAPI. A request becomes sequences for the scheduler through `dispatch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from tfllm.errors import TfllmError
from tfllm.server import dispatch, page, responses
from tfllm.server.dispatch import ApiError, State
from tfllm.server.schemas import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    error_body,
    validation_message,
)

logger = logging.getLogger(__name__)


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
            text = _render(state, messages, body.add_generation_prompt)
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
        dispatch.check_ids(state, body.tokens, "tokens")
        return {"prompt": await asyncio.to_thread(state.codec.decode, body.tokens)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        state.check_model(body.model)
        prompts = await asyncio.to_thread(dispatch.prompts, state, body.prompt)
        knobs = {"stops": body.stops(), "logprobs": body.logprobs, "echo": body.echo}
        sequences, events = dispatch.queue_sequences(
            state, body, [ids for ids, _ in prompts], body.max_tokens, knobs
        )
        request_id = f"cmpl-{uuid.uuid4().hex}"
        if body.stream:
            return dispatch.stream(state, request, body, sequences, events, request_id, False)
        choices = await dispatch.gather(request, sequences, events)
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
        text = _render(state, messages, True)
        ids = await asyncio.to_thread(state.codec.encode, text)
        stops = body.stops() + ([state.end_of_turn] if state.end_of_turn else [])
        top = (body.top_logprobs or 0) if body.logprobs else None
        knobs = {"stops": stops, "logprobs": top, "echo": False}
        max_tokens = body.max_completion_tokens or body.max_tokens
        sequences, events = dispatch.queue_sequences(state, body, [ids], max_tokens, knobs)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            return dispatch.stream(state, request, body, sequences, events, request_id, True)
        choices = await dispatch.gather(request, sequences, events)
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


def _render(state: State, messages: list[dict], add_generation_prompt: bool) -> str:
    """The chat template in Jinja's sandbox; a template that refuses the messages is a 400."""
    try:
        return state.template.render(messages, add_generation_prompt=add_generation_prompt)
    except TfllmError as err:
        raise ApiError(400, str(err), "messages") from None
