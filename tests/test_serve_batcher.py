"""serve/batcher.py with several workers: every input answered once with its own result, helpers run
only while the first worker is busy, and each helper's forward runs on one thread."""

from __future__ import annotations

import asyncio
import threading
import time

import torch

from bertkit.serve.batcher import DynamicBatcher


def run_requests(batcher, values, concurrency):
    async def main():
        sem = asyncio.Semaphore(concurrency)

        async def one(v):  # an input is a string (the batcher orders by len), its result depends on it
            async with sem:
                return await batcher.submit(["x" * (v % 7 + 1)], "embed")[0]

        return await asyncio.gather(*(one(v) for v in values))

    return asyncio.run(main())


def test_two_workers_answer_every_input_with_its_own_result():
    seen = []

    def forward(items, task):
        seen.append((threading.current_thread().name, len(items), torch.get_num_threads()))
        time.sleep(0.01)  # a forward pass long enough for requests to queue behind it
        return [len(x) * 10 for x in items]

    batcher = DynamicBatcher(forward, max_batch_size=4, max_wait_ms=1.0, workers=2)
    try:
        values = list(range(200))
        assert run_requests(batcher, values, concurrency=32) == [(v % 7 + 1) * 10 for v in values]
    finally:
        batcher.close()
    assert batcher.inputs_run == 200 and all(n <= 4 for _, n, _ in seen)
    names = {name for name, _, _ in seen}
    assert names == {"bertkit-batcher-0", "bertkit-batcher-1"}  # under load, both ran batches


def test_a_lone_request_runs_on_the_first_worker():
    names = []

    def forward(items, task):
        names.append(threading.current_thread().name)
        return items

    batcher = DynamicBatcher(forward, max_batch_size=4, max_wait_ms=0.0, workers=3)
    try:
        for v in range(20):
            assert run_requests(batcher, [v], concurrency=1) == ["x" * (v % 7 + 1)]
    finally:
        batcher.close()
    assert set(names) == {"bertkit-batcher-0"}


def test_helpers_run_on_one_thread_while_the_first_worker_is_busy(monkeypatch):
    """With 4 threads to share, two concurrent calls would get 2 each; a helper gets 1 (OpenMP keeps a
    thread pool for each thread that ever spread, and more pooled threads than CPUs stop its spinning)."""
    from bertkit.cpu import threads

    f = threads._follower  # following, whatever earlier tests set: new threads start from last_set
    monkeypatch.setattr(threads, "threads_left", lambda cpus, others, budget: budget)  # a quiet machine
    monkeypatch.setattr(f, "budget", 4)
    monkeypatch.setattr(f, "target", 4)
    monkeypatch.setattr(f, "last_set", torch.get_num_threads())
    counts = {}

    def forward(items, task):
        threads.fit_threads()  # what the model's forward does first
        counts.setdefault(threading.current_thread().name, set()).add(torch.get_num_threads())
        time.sleep(0.01)
        return items

    before = torch.get_num_threads()
    batcher = DynamicBatcher(forward, max_batch_size=2, max_wait_ms=1.0, workers=2)
    try:
        run_requests(batcher, list(range(100)), concurrency=16)
    finally:
        batcher.close()
        torch.set_num_threads(before)
    assert counts["bertkit-batcher-1"] == {1}
    assert 4 in counts["bertkit-batcher-0"] or 2 in counts["bertkit-batcher-0"]
