"""Dynamic batching: inputs from concurrent requests share one forward pass.

Request handlers (on the event loop) `submit` their tokenized inputs and await one future per
input. A worker thread takes the oldest waiting input and, while other
requests are on their way in (being read and tokenized: `arriving()`), waits up to `max_wait_ms`
for them (or until `max_batch_size` inputs are there); a lone request runs at once, so batching
costs nothing at low load. Inputs that queue up while the model is busy join the next batch. A
batch is up to `max_batch_size` inputs of similar length (the oldest input and its nearest
neighbours in length, so nobody starves and little padding is computed); each result goes back to
its own request.

With `workers` > 1 (serve's torch backend on a CPU: one per CPU it may use), several batches run
at once, each on its share of the CPU threads (`cpu/threads.concurrent_model_call`): under load,
independent one-thread forward passes get more done than one pass split over every thread (no
thread waits for another at the end of each operation), and when another process takes a CPU
the passes that still run lose nothing to it (docs/benchmarks.md, "Sharing"). A lone request
still gets every thread.

The queue is bounded: a request whose inputs do not all fit is refused at once (`QueueFull`, the
server's 503), so accepted work always completes. Work that must run alone on the model (a QA
answer with its own windows) is queued as a call. `close()` lets everything accepted finish.

`forward` and call jobs run on the worker threads, so thread-local model state is theirs to set:
`torch.autocast` (`bertkit serve --precision bf16`) is entered inside the backend's forward, on the
worker thread, not by the request handler that submitted the inputs (serve/backends.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from ..cpu.threads import concurrent_model_call


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
                 max_queue: int = 1024, workers: int = 1):
        if max_batch_size < 1 or workers < 1:
            raise ValueError("max_batch_size and workers must be at least 1")
        self.forward, self.max_batch_size, self.max_wait = forward, max_batch_size, max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.pending: list[_Item] = []
        self.cond = threading.Condition()
        self.closing = False
        self.arriving_requests = 0  # requests being read and tokenized, not yet submitted
        self.accepted = 0  # inputs ever accepted into the queue; with the two below, for /info and tests
        self.batches_run = 0
        self.inputs_run = 0
        self.on_batch: Callable[[int], None] | None = None  # told each run batch's size (access.py's histogram)
        self.calls_alone = threading.Lock()  # call jobs use the backend's own tokenizer: one at a time
        self.first_busy = False  # the first worker is running a batch (the others help only then)
        self.threads = [threading.Thread(target=self._work, args=(k,), name=f"bertkit-batcher-{k}", daemon=True)
                        for k in range(workers)]
        for t in self.threads:
            t.start()

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
                self.cond.notify_all()

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
            self.cond.notify_all()

    def queued(self) -> int:
        return len(self.pending)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new work, finish what was accepted, stop the worker."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self.threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # ---- worker side --------------------------------------------------------------------------
    def _next_batch(self, worker: int) -> list[_Item] | None:
        with self.cond:
            while True:
                # the first worker takes work whenever there is some; the others help only while it is busy
                while not self.pending or (worker > 0 and not self.first_busy):
                    if self.closing and not self.pending:
                        return None
                    self.cond.wait()
                deadline = self.pending[0].arrived + self.max_wait
                while (self.pending and len(self.pending) < self.max_batch_size and self.arriving_requests > 0
                       and not self.closing and self.pending[0].task != "call"):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self.cond.wait(remaining)
                if self.pending:  # (another worker may have taken them while this one waited)
                    if worker == 0:
                        self.first_busy = True
                    return self._take()

    def _take(self) -> list[_Item]:
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

    def _work(self, worker: int) -> None:
        while (batch := self._next_batch(worker)) is not None:
            results, error = None, None
            try:
                if batch[0].task == "call":
                    with self.calls_alone:
                        results = [batch[0].payload()]
                else:
                    with concurrent_model_call(one_thread=worker > 0):
                        results = self.forward([i.payload for i in batch], batch[0].task)
                    with self.cond:
                        self.batches_run += 1
                        self.inputs_run += len(batch)
                    if self.on_batch is not None:
                        self.on_batch(len(batch))
                if len(results) != len(batch):
                    raise RuntimeError(f"the model gave {len(results)} results for {len(batch)} inputs")
            except BaseException as e:  # noqa: BLE001 - a failed batch fails its own requests, not the server
                error = e
            if worker == 0:  # free before the answers go out, so the next request finds it free
                with self.cond:
                    self.first_busy = False
                    self.cond.notify_all()
            for k, item in enumerate(batch):
                item.loop.call_soon_threadsafe(_resolve, item.future, None if error else results[k], error)


def _resolve(future: asyncio.Future, result, error) -> None:
    if future.done():  # the client went away and its request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
