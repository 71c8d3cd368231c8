"""Starting and stopping the server: the model read, the engine warmed up (every program
traced before the first request), the scheduler's thread started, uvicorn run until a signal.

SIGTERM stops the listening socket at once (nothing new is admitted), lets the requests in
flight finish, at most `shutdown_timeout` seconds, and then exits 0. SIGINT (Ctrl-C) does the
same; a second one stops at once.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time

import uvicorn

from tfllm.errors import TfllmError
from tfllm.serve import chat
from tfllm.server.app import State, create_app
from tfllm.server.engine import Engine
from tfllm.server.loading import load_served
from tfllm.server.metrics import Metrics
from tfllm.server.scheduler import Scheduler
from tfllm.server.text import Codec

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ServerOptions:
    """The command's flags (docs/server.md says how to choose them)."""

    host: str = "127.0.0.1"
    port: int = 8000
    slots: int = 16  # sequences decoded together; the KV cache holds this many rows
    cache_len: int = 0  # positions per slot (prompt + completion); 0: max_sequence_length
    prefill_chunk: int = 256  # prompt tokens prefilled between two decode steps; 0: no limit
    max_queue: int = 64  # sequences waiting for a slot before requests get 429
    name: str = ""  # the model id of the API; default: the workdir's or export's name
    shutdown_timeout: float = 30.0  # seconds in-flight requests get after SIGTERM
    xla: bool = False  # compile the decode step with XLA


def check(options: ServerOptions, max_sequence_length: int) -> int:
    """The options' limits as one-line errors; returns the cache length."""
    cache_len = options.cache_len or max_sequence_length
    if not 2 <= cache_len <= max_sequence_length:
        raise TfllmError(f"--cache_len must be in [2, {max_sequence_length}], got {cache_len}")
    if options.slots < 1:
        raise TfllmError(f"--slots must be at least 1, got {options.slots}")
    if options.prefill_chunk < 0:
        raise TfllmError(f"--prefill_chunk must be at least 0, got {options.prefill_chunk}")
    if options.max_queue < 1:
        raise TfllmError(f"--max_queue must be at least 1, got {options.max_queue}")
    if not 0 <= options.port <= 65535:
        raise TfllmError(f"--port must be in [0, 65535], got {options.port}")
    return cache_len


def build(workdir: str | None, export: str | None, options: ServerOptions) -> State:
    """The model read and warmed up, the scheduler running: what `create_app` serves."""
    served = load_served(workdir, export)
    cache_len = check(options, served.model.config.max_sequence_length)
    codec = Codec(served.tokenizer_path)
    engine = Engine(served.model, options.slots, cache_len, jit_compile=options.xla)
    layers, kv_heads, head_dim = (
        served.model.config.num_layers,
        served.model.kv_heads,
        served.model.head_dim,
    )
    megabytes = 2 * layers * options.slots * kv_heads * cache_len * head_dim * 4 / 2**20
    logger.info("KV cache: %d slots x %d positions, %.1f MB", options.slots, cache_len, megabytes)
    started = time.perf_counter()
    sizes = engine.warm_up(codec.specials.start or (0,))
    logger.info(
        "traced the prefill and the decode step for %s busy slots in %.1f s",
        sizes,
        time.perf_counter() - started,
    )
    metrics = Metrics()
    scheduler = Scheduler(engine, codec, options.max_queue, metrics, options.prefill_chunk)
    template = chat.template_of(served.cfg, served.tokenizer_path)
    state = State(
        name=options.name or served.name,
        codec=codec,
        scheduler=scheduler,
        metrics=metrics,
        cache_len=cache_len,
        vocabulary_size=served.model.config.vocabulary_size,
        template=template,
        end_of_turn=chat.end_of_turn(template),
        shutdown_timeout=options.shutdown_timeout,
    )
    scheduler.start()
    logger.info("serving %s (%s) as %r", served.source, type(codec).__name__, state.name)
    return state


class _Server(uvicorn.Server):
    def handle_exit(self, sig, frame) -> None:
        # uvicorn re-raises a caught signal once it has shut down, so SIGTERM would end the
        # process with -15 after a clean drain; a graceful stop is a success: exit 0.
        if sig == signal.SIGTERM:
            logger.info("SIGTERM: admitting nothing new, finishing the requests in flight")
            self.should_exit = True
            return
        super().handle_exit(sig, frame)


def serve(workdir: str | None, export: str | None, options: ServerOptions) -> int:
    state = build(workdir, export, options)
    config = uvicorn.Config(
        create_app(state),
        host=options.host,
        port=options.port,
        timeout_graceful_shutdown=int(options.shutdown_timeout),
        log_level="info",
    )
    _Server(config).run()
    return 0
