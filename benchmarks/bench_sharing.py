"""Speed on a shared machine: bertkit's thread settings against the alternatives, quiet and with busy neighbours.

Each setting is an environment given to a process before it imports bertkit (the OpenMP runtime
reads it once, when torch loads it): `today` is the runtime's own defaults (BERTKIT_THREADS=default),
`bertkit` what `import bertkit` now sets (a thread count that follows the CPUs other processes leave
free, and a short spin), the others alternatives (`settings_for`). Neighbours are processes spinning
on the CPU (`while True: pass`), 0, 1 or 2 of them, started for each condition and stopped after it.

Workloads, one persistent worker process per setting, driven in interleaved rounds (each round runs
every setting in turn, the order rotating), medians over rounds:
- embed1 / embed3: `BertEmbedding(model).sentence_vectors(...)` on 1 / 3 SST-2 dev sentences per call,
  latency per call (median and p99 over all calls);
- batch32: sentence vectors for 32 sentences per call, sentences/s;
- train: a fine-tuning step (BertForSequenceClassification, batch of 32 sentences, cross-entropy,
  backward, AdamW), real tokens/s;
- serve: a `bertkit serve` process per setting, one sentence per request to /v1/embeddings from 1 and
  32 client threads (bench_serve.py's client), requests/s and latency.

    python benchmarks/bench_sharing.py                              # all settings, 0/1/2 neighbours
    python benchmarks/bench_sharing.py --settings today bertkit --neighbours 0 1 --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encoder import DEFAULT_DATA, read_sentences  # noqa: E402
from bench_serve import Server, load, pct  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

def settings_for(budget: int) -> dict[str, dict[str, str]]:
    """Setting name -> environment. `budget`: the thread count bertkit chooses on this machine."""
    n = str(budget)
    return {
        "today": {"BERTKIT_THREADS": "default"},  # the runtime's own defaults, as before bertkit chose
        "bertkit": {},  # what `import bertkit` sets: follow the machine, short spin
        "passive": {"OMP_NUM_THREADS": n, "OMP_WAIT_POLICY": "PASSIVE"},  # fixed count, threads sleep at once
        "fixed-spin-10k": {"OMP_NUM_THREADS": n, "GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"},  # no following
        "follow-spin-300k": {"GOMP_SPINCOUNT": "300000", "KMP_BLOCKTIME": "200"},  # following, the runtimes' default spin
        "spin-1k": {"OMP_NUM_THREADS": n, "GOMP_SPINCOUNT": "1000", "KMP_BLOCKTIME": "0"},
        "1-thread": {"OMP_NUM_THREADS": "1"},
    }


def _budget() -> int:
    from bertkit.cpu.threads import affinity_cpus, cgroup_cpu_quota, thread_budget

    return thread_budget(affinity_cpus(), cgroup_cpu_quota())


SETTINGS_BUDGET = _budget()
SETTINGS = settings_for(SETTINGS_BUDGET)
# calls per round for each workload
CALLS = {"embed1": 30, "embed3": 30, "batch32": 3, "train": 3}

WORKER = r"""
import json, sys, time
import bertkit  # first: its thread settings go in before torch loads
import torch
import torch.nn.functional as F
from bertkit.cpu.threads import describe

model_name, data = sys.argv[1], sys.argv[2]
sentences = [line.split("\t")[0] for line in open(data, encoding="utf-8").read().splitlines()[1:]]
emb = bertkit.BertEmbedding(model_name)
clf = bertkit.load(model_name, head="classification", num_labels=2).train()
opt = torch.optim.AdamW(clf.parameters(), lr=1e-5)
tok = clf.tokenizer
k = [0]

def take(n):
    out = [sentences[(k[0] + i) % len(sentences)] for i in range(n)]
    k[0] += n
    return out

def train_step():
    b = tok(take(32), max_len=128)
    loss = F.cross_entropy(clf(b.input_ids, b.segment_ids, b.valid_lengths), torch.arange(32) % 2)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return int(b.valid_lengths.sum())

def run(workload):
    t = time.perf_counter()
    if workload == "embed1":
        emb.sentence_vectors(take(1)); n = 1
    elif workload == "embed3":
        emb.sentence_vectors(take(3)); n = 3
    elif workload == "batch32":
        emb.sentence_vectors(take(32)); n = 32
    else:
        n = train_step()
    return time.perf_counter() - t, n, torch.get_num_threads()

for w in ("embed1", "embed3", "batch32", "train"):
    run(w); run(w)  # warm-up
print(json.dumps({"ready": describe(), "threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    print(json.dumps([run(req["workload"]) for _ in range(req["calls"])]), flush=True)
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="TSV, sentence in the first column (SST-2 dev)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--neighbours", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workloads", nargs="+", default=list(CALLS) + ["serve"], choices=list(CALLS) + ["serve"])
    p.add_argument("--serve-seconds", type=float, default=6.0)
    p.add_argument("--settle", type=float, default=0.6,
                   help="seconds of quiet between two settings' turns: each setting's own measurement of the "
                        "machine should see the neighbours of the condition, not the setting measured before it")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    return p.parse_args(argv)


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


class Neighbours:
    """n processes, each keeping one core busy, for the duration of a `with` block."""

    def __init__(self, n):
        self.n, self.procs = n, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        time.sleep(0.5 if self.n else 0)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


class Worker:
    def __init__(self, name, env, model, data):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, model, str(data)], cwd=REPO, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.ready = json.loads(self.proc.stdout.readline())

    def run(self, workload, calls):
        self.proc.stdin.write(json.dumps({"workload": workload, "calls": calls}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(60)


def setting_env(name):
    from bertkit.cpu.threads import SET_MARKER

    # this process imported bertkit too: nothing of its own thread settings may reach the setting's process
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "BERTKIT_THREADS", SET_MARKER)}
    return {**env, **SETTINGS[name]}


def summarize(workload, samples):
    """samples: per round, a list of (seconds, items) per call."""
    threads = statistics.mean(t for rnd in samples for _, _, t in rnd)
    if workload in ("embed1", "embed3"):
        lat = [s for rnd in samples for s, _, _ in rnd]
        return {"median_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "threads": threads}
    rates = [sum(n for _, n, _ in rnd) / sum(s for s, _, _ in rnd) for rnd in samples]
    return {"per_s": statistics.median(rates), "threads": threads}


def main(argv=None):
    args = parse_args(argv)
    from bertkit.cpu.threads import affinity_cpus, cgroup_cpu_quota

    print(f"CPU: {cpu_name()}; affinity {affinity_cpus()} CPUs (of {os.cpu_count()}); cgroup quota "
          f"{cgroup_cpu_quota() or 'none'}; load average {os.getloadavg()[0]:.1f}")
    workers = {name: Worker(name, setting_env(name), args.model, args.data) for name in args.settings}
    for name, w in workers.items():
        print(f"  {name:<10} env {SETTINGS[name] or '(none: bertkit decides)'}; torch threads {w.ready['threads']}; "
              f"{w.ready['ready']}")
    results: dict = {}
    in_process = [w for w in args.workloads if w != "serve"]
    try:
        for n in args.neighbours:
            with Neighbours(n):
                samples = {(s, w): [] for s in args.settings for w in in_process}
                for r in range(args.rounds):
                    order = args.settings[r % len(args.settings):] + args.settings[:r % len(args.settings)]
                    for w in in_process:
                        for s in order:
                            time.sleep(args.settle)  # the last setting's work is not a neighbour of this one
                            samples[(s, w)].append(workers[s].run(w, CALLS[w]))
                for (s, w), smp in samples.items():
                    results[(s, w, n)] = summarize(w, smp)
            print(f"neighbours {n}: done ({time.strftime('%H:%M:%S')})", flush=True)
    finally:
        for w in workers.values():
            w.close()
    if "serve" in args.workloads:
        serve(args, results)
    report(args, results)


def serve(args, results):
    sentences = read_sentences(args.data, None)
    import bertkit

    directory = bertkit.resolve(args.model)
    servers = {}
    for s in args.settings:
        env = setting_env(s)
        servers[s] = Server(directory, "--max-batch-size", 32, "--max-client-batch-size", 32, env=env)
    try:
        for srv in servers.values():
            srv.wait_ready()
        for n in args.neighbours:
            with Neighbours(n):
                for c in args.concurrency:
                    for s, srv in servers.items():
                        time.sleep(args.settle)
                        load(srv.port, sentences, c, 1.5)  # warm-up
                        rate, lat = load(srv.port, sentences, c, args.serve_seconds)
                        results[(s, f"serve c={c}", n)] = {"per_s": rate, "median_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}
            print(f"serve, neighbours {n}: done ({time.strftime('%H:%M:%S')})", flush=True)
    finally:
        for srv in servers.values():
            srv.stop()


def report(args, results):
    workloads = sorted({w for _, w, _ in results}, key=lambda w: (w.startswith("serve"), w))
    print("\n| workload | setting | " + " | ".join(f"{n} busy" for n in args.neighbours) + " | " +
          " | ".join(f"{n} busy / quiet" for n in args.neighbours if n) + " |")
    print("|---|---|" + "---:|" * (2 * len(args.neighbours) - (0 in args.neighbours)))
    for w in workloads:
        for s in args.settings:
            row = [results.get((s, w, n)) for n in args.neighbours]
            if not any(row):
                continue
            key = "per_s" if "per_s" in row[0] else "median_ms"
            cells = [_cell(r) for r in row]
            quiet = results.get((s, w, 0))
            ratios = []
            for n in args.neighbours:
                if n and quiet and results.get((s, w, n)):
                    r = results[(s, w, n)]
                    ratios.append(f"{r[key] / quiet[key]:.2f}x" + (f" (p99 {r['p99_ms'] / quiet['p99_ms']:.2f}x)"
                                                                   if "p99_ms" in r and key == "median_ms" else ""))
            print(f"| {w} | {s} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    print("\nembed: latency per call, median / p99 (ms); batch32: sentences/s; train: tokens/s; "
          "serve: requests/s (median / p99 ms); [n]: mean torch threads after a call, where not the budget")
    base = "today" if "today" in args.settings else None
    if base:
        print(f"\nagainst `today`, quiet ({base} = 1.00):")
        for w in workloads:
            q = results.get((base, w, 0))
            if not q:
                continue
            key = "per_s" if "per_s" in q else "median_ms"
            print(f"  {w:<12} " + "  ".join(f"{s} {results[(s, w, 0)][key] / q[key]:.3f}" for s in args.settings
                                            if (s, w, 0) in results) + ("  (rate)" if key == "per_s" else "  (latency)"))


def _cell(r):
    if r is None:
        return ""
    if "threads" in r and round(r["threads"], 1) != SETTINGS_BUDGET:
        return _cell({k: v for k, v in r.items() if k != "threads"}) + f" [{r['threads']:.1f}]"
    if "per_s" in r and "median_ms" in r:
        return f"{r['per_s']:.0f} ({r['median_ms']:.0f} / {r['p99_ms']:.0f})"
    if "per_s" in r:
        return f"{r['per_s']:.0f}"
    return f"{r['median_ms']:.1f} / {r['p99_ms']:.1f}"


if __name__ == "__main__":
    main()
