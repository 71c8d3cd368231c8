"""Continuous batching: one thread owns the model and runs the step loop; the HTTP side hands
it sequences and reads their events.

Between two decode steps the loop retires finished sequences, admits waiting ones into the
free slots and prefills at most `prefill_chunk` prompt tokens (one call per length bucket of
the admitted prompts; a prompt longer than that goes in chunks over several iterations), so a
short request never waits for a long one to finish and the running sequences wait for at most
one chunk of prefill between two of their tokens. A sequence finishes on one of the model's
stop ids, a stop string (found in the decoded text; the tail that may still become one is not
sent yet), its `max_tokens`, or when it is cancelled (its client went away): then its slot is
free at the next step.

Events reach the HTTP side through the request's asyncio queue, posted thread-safely:
("text", choice, text, [(token, logprob, top)]), ("done", choice, finish_reason, usage) and
("error", choice, message).
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import numpy as np

from tfllm.server.engine import Engine
from tfllm.server.metrics import Metrics
from tfllm.server.sequence import Closed, QueueFull, Sequence
from tfllm.server.text import Codec, find_stop, held_back

logger = logging.getLogger(__name__)


class Scheduler:
    """The step loop over an `Engine`'s slots, in its own thread."""

    def __init__(
        self,
        engine: Engine,
        codec: Codec,
        max_queue: int,
        metrics: Metrics,
        prefill_chunk: int = 0,
    ):
        self.engine, self.codec, self.max_queue, self.metrics = engine, codec, max_queue, metrics
        self.prefill_chunk = prefill_chunk  # prompt tokens prefilled per iteration; 0: all
        self.stop_ids = set(codec.specials.stop)
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.admitted: list[tuple[int, Sequence]] = []  # slot taken, nothing prefilled yet
        self.partial: dict[int, tuple[Sequence, int]] = {}  # slot: (sequence, ids prefilled)
        self.running: dict[int, Sequence] = {}
        self.rows = {
            "token": np.zeros(engine.slots, np.int32),
            "index": np.zeros(engine.slots, np.int32),
            "start": np.zeros(engine.slots, np.int32),
            "temperature": np.zeros(engine.slots, np.float32),
            "top_k": np.zeros(engine.slots, np.int32),
            "top_p": np.ones(engine.slots, np.float32),
            "seed": np.zeros(engine.slots, np.int64),
            "step": np.zeros(engine.slots, np.int32),
        }
        self._condition = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="tfllm-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, sequences: list[Sequence]) -> None:
        """Queues all of `sequences` or none (QueueFull, Closed)."""
        with self._condition:
            if self._closing:
                raise Closed()
            if len(self.waiting) + len(sequences) > self.max_queue:
                raise QueueFull()
            now = time.monotonic()
            for sequence in sequences:
                sequence.submitted = now
            self.waiting.extend(sequences)
            self._condition.notify()

    def close(self, timeout: float) -> bool:
        """Admits nothing new, lets the queued and running sequences finish (at most
        `timeout` seconds); returns whether they did."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def depth(self) -> tuple[int, int]:
        """(waiting, running) sequences; those whose prompt is not all prefilled wait."""
        return len(self.waiting) + len(self.admitted) + len(self.partial), len(self.running)

    def _busy(self) -> bool:
        return bool(self.waiting or self.admitted or self.partial or self.running)

    def _loop(self) -> None:
        while True:
            with self._condition:
                while not (self._busy() or self._closing):
                    self._condition.wait()
                if self._closing and not self._busy():
                    return
                taken = {*self.running, *self.partial, *(slot for slot, _ in self.admitted)}
                for slot in range(self.engine.slots):
                    if not self.waiting:
                        break
                    if slot not in taken:  # in arrival order, to the lowest free slots
                        self.admitted.append((slot, self.waiting.popleft()))
            if self.admitted or self.partial:
                self._prefill()
                if self._prefill_first():
                    continue
            for slot, sequence in list(self.running.items()):
                if sequence.cancelled:
                    self._retire(slot, None)
            if self.running:
                self._step()

    def _prefill_first(self) -> bool:
        """Whether to admit and prefill again before the next decode step: sequences arrived
        during the prefill, slots are free for them, and the sequences waiting for their
        prefill outnumber the running ones (a burst at an idle server, whose first requests
        were prefilled as the rest arrived: a decode step of the few running sequences would
        delay many first tokens)."""
        with self._condition:
            arrived = len(self.waiting)
        taken = len(self.running) + len(self.partial) + len(self.admitted)
        waiting = arrived + len(self.partial) + len(self.admitted)
        return arrived > 0 and taken < self.engine.slots and waiting > len(self.running)

    def _prefill(self) -> None:
        """At most `prefill_chunk` prompt tokens (padding included; at least one call): first
        the next chunk of each prompt already under way, then the admitted prompts, one call
        per length bucket (and per whether the prompt's log-probs are wanted), so that 16
        requests arriving at once wait for about one prefill each, not 16 in turn; the
        shortest prompts first, so that their first tokens come out soonest. What does not fit
        waits for the next iteration, after a decode step of the running sequences.

        The limit holds while at least as many sequences run as wait for their prefill: a
        burst of requests arriving at an idle server is prefilled at once (the few running
        sequences wait, the many new ones get their first tokens soonest)."""
        waiting = len(self.admitted) + len(self.partial)
        chunk = self.prefill_chunk if len(self.running) >= waiting else 0
        spent = 0
        for slot, (sequence, done) in list(self.partial.items()):
            if chunk and spent >= chunk:
                return
            if sequence.cancelled:
                self._free(slot)
                continue
            spent += self._continue(slot, sequence, done)
        groups: dict[tuple[int, bool], list[tuple[int, Sequence]]] = {}
        for slot, sequence in self.admitted:
            if sequence.cancelled:
                continue
            if chunk and len(sequence.ids) > chunk and not sequence.echo:
                self.partial[slot] = (sequence, 0)  # a long prompt: in chunks, from the next
                continue
            width = self.engine.width(len(sequence.ids), sequence.max_tokens)
            groups.setdefault((width, sequence.echo), []).append((slot, sequence))
        self.admitted = []
        for (_, echo), group in sorted(groups.items()):
            while group:
                width = max(len(s.ids) for _, s in group)
                rows = len(group) if not chunk else (chunk - spent) // width
                rows = max(rows, 0 if spent else 1)
                if not rows:  # the rest of the admitted prompts go in the next iterations
                    self.admitted += group
                    break
                self._prefill_group(group[:rows], echo)
                spent += rows * width
                group = group[rows:]

    def _prefill_group(self, group: list[tuple[int, Sequence]], echo: bool) -> None:
        slots = [slot for slot, _ in group]
        try:
            outs = self.engine.prefill(slots, [(s.ids, s.knobs) for _, s in group], echo)
        except Exception as err:  # a bad request must not stop the loop
            self._failed("prefill", [s for _, s in group], err)
            return
        for (slot, sequence), out in zip(group, outs, strict=True):
            self._start(slot, sequence, out)

    def _continue(self, slot: int, sequence: Sequence, done: int) -> int:
        """Prefills the next chunk of a long prompt whose first `done` ids are in its slot;
        starts the sequence after its last chunk. Returns the chunk's length."""
        ids = sequence.ids[done : done + self.prefill_chunk]
        try:
            [out] = self.engine.prefill([slot], [(ids, sequence.knobs)], False, offset=done)
        except Exception as err:
            self._failed("prefill", [sequence], err)
            self._free(slot)
            return len(ids)
        done += len(ids)
        if done < len(sequence.ids):
            self.partial[slot] = (sequence, done)
            # A decode step writes every computed row at its index: here, the column the
            # next chunk overwrites, not one of the prompt's columns already written.
            self.rows["index"][slot] = done
        else:
            del self.partial[slot]
            self._start(slot, sequence, out)
        return len(ids)

    def _failed(self, what: str, sequences: list[Sequence], err: Exception) -> None:
        ids = ", ".join(s.request_id for s in sequences)
        logger.exception("%s failed (requests %s)", what, ids)
        for sequence in sequences:
            sequence.post("error", sequence.choice, f"{what} failed: {err}")

    def _free(self, slot: int) -> None:
        """Frees the slot of a sequence whose prompt was not all prefilled."""
        self.partial.pop(slot, None)
        for name, row in self.rows.items():
            row[slot] = 1 if name == "top_p" else 0

    def _start(self, slot: int, sequence: Sequence, out: dict) -> None:
        """Puts a prefilled sequence in its slot's rows and takes its first token."""
        if sequence.echo:
            sequence.post("prompt", sequence.choice, out["prompt_logprobs"], out["prompt_top"])
        self.running[slot] = sequence
        rows = self.rows
        rows["index"][slot] = out["width"]  # the first generated token's column
        rows["start"][slot] = out["width"] - len(sequence.ids)
        rows["step"][slot] = 1
        for knob in ("temperature", "top_k", "top_p", "seed"):
            rows[knob][slot] = sequence.knobs[knob]
        if sequence.max_tokens == 0:
            self._retire(slot, "length")
            return
        self._advance(slot, int(out["token"]), float(out["logprob"]), out["top"])

    def _step(self) -> None:
        want = any(s.logprobs is not None for s in self.running.values())
        size = self.engine.busy_rows(max(self.running))
        try:
            out = self.engine.step({k: row[:size] for k, row in self.rows.items()}, want)
        except Exception as err:
            self._failed("decode step", list(self.running.values()), err)
            for slot in list(self.running):
                self._retire(slot, None)
            return
        rows = self.rows
        for slot in list(self.running):
            rows["index"][slot] += 1
            rows["step"][slot] += 1
            logprob, top = 0.0, None
            if want:
                logprob = float(out["logprob"][slot])
                top = (out["top"][0][slot], out["top"][1][slot])
            self._advance(slot, int(out["token"][slot]), logprob, top)

    def _advance(self, slot: int, token: int, logprob: float, top) -> None:
        """Takes the sequence's next token: sends what text is safe, finishes when done."""
        sequence = self.running[slot]
        now = time.monotonic()
        if sequence.count == 0:
            self.metrics.observe("time_to_first_token_seconds", now - sequence.submitted)
        else:
            self.metrics.observe("inter_token_latency_seconds", now - sequence.last_token)
        sequence.last_token = now
        sequence.count += 1
        self.rows["token"][slot] = token
        if token in self.stop_ids:
            self._send(sequence, self.codec.decode(sequence.generated))  # the held-back tail
            self._retire(slot, "stop")
            return
        sequence.generated.append(token)
        if sequence.logprobs is not None:
            sequence.pending.append((token, logprob, top))
        text = self.codec.decode(sequence.generated)
        at = find_stop(text, sequence.stops, sequence.sent)
        if at >= 0:
            self._send(sequence, text[:at])
            self._retire(slot, "stop")
        elif sequence.count >= sequence.max_tokens:
            self._send(sequence, text)
            self._retire(slot, "length")
        else:
            self._send(sequence, text[: len(text) - held_back(text, sequence.stops)])

    def _send(self, sequence: Sequence, text: str) -> None:
        if len(text) > sequence.sent or sequence.pending:
            sequence.post("text", sequence.choice, text[sequence.sent :], sequence.pending)
            sequence.sent, sequence.pending = max(len(text), sequence.sent), []

    def _retire(self, slot: int, reason: str | None) -> None:
        """Frees `slot`; `reason` None: cancelled or failed, nothing more is sent."""
        sequence = self.running.pop(slot)
        self._free(slot)
        self.metrics.add("generation_tokens_total", sequence.count)
        if reason is not None:
            usage = (len(sequence.ids), sequence.count)
            sequence.post("done", sequence.choice, reason, usage)
