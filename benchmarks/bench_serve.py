"""`bertkit serve` under load: real server processes on 127.0.0.1, a real HTTP client.

For each backend (torch: the checkpoint on bertkit's PyTorch model; onnx: its `bertkit export`
directory on ONNX Runtime) two servers run side by side, dynamic batching on (`--max-batch-size 32`)
and off (`--max-batch-size 1`). Client threads (http.client, one keep-alive connection each) post
one SST-2 dev sentence per request to /v1/embeddings (encoding_format base64, as OpenAI's client
sends) back to back for --seconds at concurrency 1, 8 and 32; the four servers are measured in
turn at each concurrency, so they see the same machine conditions. Reported: requests/s, p50 and
p99 latency; and for reference one in-process call of the same backend on the same sentences
(tokenize + forward + pooling, no HTTP).

    python benchmarks/bench_serve.py --threads 2 --seconds 8
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encoder import DEFAULT_DATA, read_sentences  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--backends", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per server and concurrency")
    p.add_argument("--threads", type=int, default=2, help="model threads in each server")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    return p.parse_args(argv)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model, *args, env=None):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "bertkit", "serve", "--model", str(model), "--port",
                                      str(self.port), *map(str, args)], cwd=REPO, stderr=subprocess.PIPE, text=True,
                                     env=dict(env or os.environ, TOKENIZERS_PARALLELISM="false"))

    def wait_ready(self, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"server failed: {self.proc.stderr.read()}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.3)
        sys.exit("server did not start")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def load(port, sentences, concurrency, seconds):
    """Clients posting one sentence per request for `seconds`; returns (requests/s, latencies s)."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = []
    start_barrier = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        i = k * 997
        start_barrier.wait()
        while time.perf_counter() < stop_at[0]:
            body = json.dumps({"input": sentences[i % len(sentences)], "encoding_format": "base64"})
            t = time.perf_counter()
            conn.request("POST", "/v1/embeddings", body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                errors.append(r.status)
            latencies[k].append(time.perf_counter() - t)
            i += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    start_barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    flat = [x for ls in latencies for x in ls]
    if errors:
        print(f"  ({len(errors)} non-200 responses: {sorted(set(errors))})")
    return len(flat) / elapsed, flat


def in_process_latencies(model_or_export, backend, sentences, threads):
    """One call = tokenize + forward + sentence pooling for one sentence, no HTTP."""
    import torch

    torch.set_num_threads(threads)
    from bertkit.serve.backends import ExportBackend, TorchBackend

    b = ExportBackend(Path(model_or_export), threads=threads) if backend == "onnx" else TorchBackend(Path(model_or_export))
    out = []
    with torch.inference_mode():
        for s in sentences[:20]:  # warm-up
            b.forward(b.tokenizer.encode_batch([s], max_len=b.embedding_max_len), "embed")
        for s in sentences:
            t = time.perf_counter()
            b.forward(b.tokenizer.encode_batch([s], max_len=b.embedding_max_len), "embed")
            out.append(time.perf_counter() - t)
    return out


def in_process_batching_ceiling(model_or_export, backend, sentences, threads, batch_size=32, rounds=3):
    """Requests/s of the backend itself, in process (tokenize + forward + pooling, no HTTP, no queue),
    one sentence per call against `batch_size` sentences per call (file order): the most that
    dynamic batching can gain on this machine. Interleaved rounds, medians."""
    import statistics

    import torch

    torch.set_num_threads(threads)
    from bertkit.serve.backends import ExportBackend, TorchBackend

    b = ExportBackend(Path(model_or_export), threads=threads) if backend == "onnx" else TorchBackend(Path(model_or_export))
    sample = sentences[:256]

    def rate(size):
        t = time.perf_counter()
        for i in range(0, len(sample), size):
            b.forward(b.tokenizer.encode_batch(sample[i:i + size], max_len=b.embedding_max_len), "embed")
        return len(sample) / (time.perf_counter() - t)

    rates = {1: [], batch_size: []}
    with torch.inference_mode():
        rate(1), rate(batch_size)  # warm-up
        for r in range(rounds):
            for size in ((1, batch_size) if r % 2 == 0 else (batch_size, 1)):
                rates[size].append(rate(size))
    return statistics.median(rates[1]), statistics.median(rates[batch_size])


def pct(xs, q):
    return float(np.percentile(np.array(xs) * 1000, q))


def main(argv=None):
    args = parse_args(argv)
    import bertkit

    sentences = read_sentences(args.data, None)
    directory = bertkit.resolve(args.model)
    print(f"model {args.model}; {len(sentences)} SST-2 dev sentences, one per request; {args.threads} model threads per "
          f"server; {args.seconds:g} s per measurement; max-wait-ms {args.max_wait_ms:g}; load average "
          f"{os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"torch": directory}
        if "onnx" in args.backends:
            from bertkit.export import export

            export(directory, "onnx", Path(tmp) / "onnx")
            sources["onnx"] = Path(tmp) / "onnx"
        servers = {}
        for backend in args.backends:
            for batching, size in (("on", 32), ("off", 1)):
                servers[(backend, batching)] = Server(sources[backend], "--threads", args.threads, "--max-batch-size", size,
                                                      "--max-wait-ms", args.max_wait_ms, "--max-client-batch-size", 32)
        for s in servers.values():
            s.wait_ready()
        results = {}
        try:
            for c in args.concurrency:
                for key, server in servers.items():
                    load(server.port, sentences, c, min(2.0, args.seconds / 4))  # warm-up
                    rate, lat = load(server.port, sentences, c, args.seconds)
                    results[(*key, c)] = (rate, pct(lat, 50), pct(lat, 99), len(lat))
                    print(f"{key[0]:<6} batching {key[1]:<4} concurrency {c:>3}: {rate:8.1f} req/s   p50 {pct(lat, 50):7.1f} ms"
                          f"   p99 {pct(lat, 99):7.1f} ms   ({len(lat)} requests)", flush=True)
        finally:
            for s in servers.values():
                s.stop()
        print("\nsummary")
        for backend in args.backends:
            inproc = in_process_latencies(sources[backend], backend, sentences, args.threads)
            on1 = results.get((backend, "on", 1))
            print(f"{backend}: in-process call p50 {pct(inproc, 50):.1f} ms, p99 {pct(inproc, 99):.1f} ms; server p99 at "
                  f"concurrency 1 (batching on) {on1[2]:.1f} ms = {on1[2] / pct(inproc, 99):.2f}x the in-process p99, "
                  f"{on1[2] / pct(inproc, 50):.2f}x its p50")
            for c in args.concurrency:
                on, off = results[(backend, "on", c)], results[(backend, "off", c)]
                print(f"{backend}: concurrency {c:>3}: batching on / off throughput = {on[0] / off[0]:.2f}x")
            one, many = in_process_batching_ceiling(sources[backend], backend, sentences, args.threads)
            print(f"{backend}: in process, no server: {one:.1f} sentences/s one per call, {many:.1f} at 32 per call: "
                  f"batching can gain at most {many / one:.2f}x on this machine")


if __name__ == "__main__":
    main()
