"""Dynamic batching: inputs from concurrent requests share one forward pass.

Request handlers (on the event loop) `submit` their tokenized inputs and await one future per
input. A single worker thread owns the model: it takes the oldest waiting input and, while other
requests are on their way in (being read and tokenized: `arriving()`), waits up to `max_wait_ms`
for them (or until `max_batch_size` inputs are there); a lone request runs at once, so batching
costs nothing at low load. Inputs that queue up while the model is busy join the next batch. A
batch is up to `max_batch_size` inputs of similar length (the oldest input and its nearest
neighbours in length, so nobody starves and little padding is computed); each result goes back to
its own request.

The queue is bounded: a request whose inputs do not all fit is refused at once (`QueueFull`, the
server's 503), so accepted work always completes. Work that must run alone on the model (a QA
answer with its own windows) is queued as a call. `close()` lets everything accepted finish.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable


class QueueFull(Exception):
    """The queue has no room for the request's inputs."""


@dataclass
class _Item:
    length: int
    payload: Any  # an Encoding, or a callable for call jobs
    task: str  # "embed", "embed_raw", "predict", or "call"
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    def __init__(self, forward: Callable[[list, str], list], max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 1024):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.forward, self.max_batch_size, self.max_wait = forward, max_batch_size, max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.pending: list[_Item] = []
        self.cond = threading.Condition()
        self.closing = False
        self.arriving_requests = 0  # requests being read and tokenized, not yet submitted
        self.accepted = 0  # inputs ever accepted into the queue; with the two below, for /info and tests
        self.batches_run = 0
        self.inputs_run = 0
        self.thread = threading.Thread(target=self._work, name="bertkit-batcher", daemon=True)
        self.thread.start()

    # ---- event-loop side ----------------------------------------------------------------------
    @contextmanager
    def arriving(self):
        """Around a request's reading and tokenizing: the worker may wait for it to join a batch."""
        with self.cond:
            self.arriving_requests += 1
        try:
            yield
        finally:
            with self.cond:
                self.arriving_requests -= 1
                self.cond.notify()

    def submit(self, encodings: list, task: str) -> list[asyncio.Future]:
        loop = asyncio.get_running_loop()
        items = [_Item(len(e), e, task, loop.create_future(), loop) for e in encodings]
        self._enqueue(items)
        return [i.future for i in items]

    def submit_call(self, fn: Callable[[], Any]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        item = _Item(0, fn, "call", loop.create_future(), loop)
        self._enqueue([item])
        return item.future

    def _enqueue(self, items: list[_Item]) -> None:
        with self.cond:
            if self.closing:
                raise QueueFull("the server is shutting down")
            if len(self.pending) + len(items) > self.max_queue:
                raise QueueFull(f"{len(self.pending)} inputs are waiting (queue limit {self.max_queue})")
            self.pending.extend(items)
            self.accepted += len(items)
            self.cond.notify()

    def queued(self) -> int:
        return len(self.pending)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new work, finish what was accepted, stop the worker."""
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join(timeout)

    # ---- worker side --------------------------------------------------------------------------
    def _next_batch(self) -> list[_Item] | None:
        with self.cond:
            while not self.pending:
                if self.closing:
                    return None
                self.cond.wait()
            deadline = self.pending[0].arrived + self.max_wait
            while (len(self.pending) < self.max_batch_size and self.arriving_requests > 0 and not self.closing
                   and self.pending[0].task != "call"):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.cond.wait(remaining)
            oldest = self.pending[0]
            if oldest.task == "call":
                self.pending.pop(0)
                return [oldest]
            same = [i for i in self.pending if i.task == oldest.task]
            if len(same) > self.max_batch_size:
                # the oldest input and the max_batch_size - 1 inputs nearest to it in length
                same.sort(key=lambda i: i.length)
                at = next(k for k, i in enumerate(same) if i is oldest)
                lo = min(max(0, at - self.max_batch_size // 2), len(same) - self.max_batch_size)
                same = same[lo:lo + self.max_batch_size]
            chosen = {id(i) for i in same}
            self.pending = [i for i in self.pending if id(i) not in chosen]
            return same

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                if batch[0].task == "call":
                    results = [batch[0].payload()]
                else:
                    results = self.forward([i.payload for i in batch], batch[0].task)
                    self.batches_run += 1
                    self.inputs_run += len(batch)
                for item, result in zip(batch, results):
                    item.loop.call_soon_threadsafe(_resolve, item.future, result, None)
            except BaseException as e:  # noqa: BLE001 - a failed batch fails its own requests, not the server
                for item in batch:
                    item.loop.call_soon_threadsafe(_resolve, item.future, None, e)


def _resolve(future: asyncio.Future, result, error) -> None:
    if future.done():  # the client went away and its request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
