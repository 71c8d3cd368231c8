"""From a request to its sequences and back: prompts checked and tokenized, one `Sequence`
per prompt and choice queued with the scheduler, their events gathered into a whole response
or turned into a stream, and the sequences cancelled when the client goes away."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

from fastapi import Request
from fastapi.responses import StreamingResponse

from tfllm.server import responses
from tfllm.server.metrics import Metrics
from tfllm.server.responses import Choice
from tfllm.server.scheduler import Scheduler
from tfllm.server.schemas import error_body
from tfllm.server.sequence import Closed, QueueFull, Sequence
from tfllm.server.text import Codec
from tfllm.tokenizers import chat as chat_templates


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


def check_ids(state: State, ids: list[int], field: str) -> None:
    bad = [i for i in ids if not 0 <= i < state.vocabulary_size]
    if bad:
        raise ApiError(
            400, f"{field}: token id {bad[0]} is outside [0, {state.vocabulary_size})", field
        )


def prompts(state: State, prompt) -> list[tuple[list[int], str]]:
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
            check_ids(state, item, "prompt")
            out.append((start + list(item), state.codec.decode(item)))
    return out


def queue_sequences(
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


async def watch(request: Request, sequences: list[Sequence]) -> None:
    """Cancels the sequences once the client has gone away."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.2)
    for sequence in sequences:
        sequence.cancelled = True


def apply_event(choices: dict, event) -> None:
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


async def gather(request: Request, sequences: list[Sequence], events: asyncio.Queue):
    choices = {s.choice: Choice() for s in sequences}
    watcher = asyncio.create_task(watch(request, sequences))
    try:
        while any(c.reason is None for c in choices.values()):
            apply_event(choices, await events.get())
    finally:
        watcher.cancel()
        for sequence in sequences:
            sequence.cancelled = True  # a no-op for finished ones
    return [choices[s.choice] for s in sequences]


def stream(
    state: State, request: Request, body, sequences, events, request_id: str, chat: bool
) -> StreamingResponse:
    async def chunks():
        choices = {s.choice: Choice() for s in sequences}
        watcher = asyncio.create_task(watch(request, sequences))
        try:
            if chat:
                for s in sequences:
                    yield responses.sse(
                        responses.chunk(request_id, state.name, True, s.choice, None, role=True)
                    )
            while any(c.reason is None for c in choices.values()):
                event = await events.get()
                try:
                    apply_event(choices, event)
                except ApiError as err:
                    yield responses.sse(error_body(err.message, "server_error"))
                    return
                kind, index = event[0], event[1]
                if kind == "text":
                    logprobs = stream_logprobs(state, body, chat, choices[index], event[3])
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


def stream_logprobs(state: State, body, chat: bool, choice: Choice, tokens: list):
    if not tokens:
        return None
    if chat:
        return responses.chat_logprobs(state.codec, tokens, body.top_logprobs or 0)
    return responses.completion_logprobs(state.codec, Choice(tokens=tokens), body.logprobs, None, 0)
