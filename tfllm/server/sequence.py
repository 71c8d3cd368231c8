"""A sequence of continuous batching: one choice of one request, as the HTTP side hands it to
the scheduler (`tfllm.server.scheduler`) and the scheduler fills it in; the two ways the
scheduler refuses one."""

from __future__ import annotations

import asyncio
import dataclasses


@dataclasses.dataclass(eq=False)
class Sequence:
    """One choice of one request: a prompt to continue and how."""

    request_id: str
    choice: int
    ids: list[int]  # the prompt's ids, start ids included
    max_tokens: int
    knobs: dict  # temperature, top_k, top_p, seed
    events: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    stops: list[str] = dataclasses.field(default_factory=list)
    logprobs: int | None = None  # top alternatives per token, None: no log-probs
    echo: bool = False  # also the prompt's log-probs
    cancelled: bool = False
    # Set by the scheduler.
    generated: list[int] = dataclasses.field(default_factory=list)
    count: int = 0  # tokens generated, a final stop id included
    sent: int = 0  # characters of the decoded completion already sent
    pending: list = dataclasses.field(default_factory=list)  # token log-probs not sent yet
    submitted: float = 0.0
    last_token: float = 0.0

    def post(self, *event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


class QueueFull(Exception):
    """More sequences are waiting than the queue holds."""


class Closed(Exception):
    """The server is shutting down and admits nothing new."""
