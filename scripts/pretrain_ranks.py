"""Pretraining with 8 simulated ranks (torchrun, gloo, one machine): each reads ~1/8 of the shards, same result as 1.

    python scripts/pretrain_ranks.py --runs runs/ranks [--ranks 8] [--steps 12]

Makes shards from WikiText-2 valid (`bertkit pretrain-data`, sequence length 128), then pretrains a
tiny model (`bert_2_128_2`, dropout 0 so that no process draws its own masks) for `--steps` steps of
a global batch of 64, once in one process and once with `torchrun --nproc-per-node RANKS` (gloo, one
thread per process). Prints the shard bytes each rank read (bertkit.json `shard_bytes_read_per_rank`)
against the size of the shards' arrays, the largest per-step loss difference, and the largest final
weight difference: equal losses step for step mean equal global batches.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "ranks")
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--steps", type=int, help="default: one epoch")
    args = p.parse_args()
    if args.runs.exists():
        shutil.rmtree(args.runs)
    shards = args.runs / "shards"
    import bertkit
    from safetensors.torch import load_file

    vocab = bertkit.resolve("all-minilm-l6-v2") / "vocab.txt"
    subprocess.run([sys.executable, "-m", "bertkit", "pretrain-data", "--input", str(args.data / "wikitext-2" / "wiki.valid.tokens"),
                    "--vocab", str(vocab), "--out", str(shards), "--max-seq-length", "128", "--dupe-factor", "1",
                    "--format", "wikitext", "--no-progress", "--chunk-mb", "0.25"], check=True, env=ENV, capture_output=True)
    from bertkit.data.loader import PretrainingLoader

    steps = args.steps or len(PretrainingLoader(shards, 64, drop_last=True))
    total = 0
    for shard in shards.glob("shard-*.npz"):
        with zipfile.ZipFile(shard) as zf:
            total += sum(i.file_size for i in zf.infolist())
    common = ["pretrain", "--data", shards, "--config", "bert_2_128_2", "--dropout", "0", "--steps", steps,
              "--batch-size", "64", "--lr", "1e-3", "--log-interval", "1", "--no-progress"]
    runs = {}
    for n in (1, args.ranks):
        out = args.runs / f"{n}-rank"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)] if n > 1 else [sys.executable]
        proc = subprocess.run([*launcher, "-m", "bertkit", *map(str, common), "--out", str(out)], env=ENV,
                              capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        info = json.loads((out / "final" / "bertkit.json").read_text())
        losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
        runs[n] = (info["shard_bytes_read_per_rank"], losses, load_file(out / "final" / "model.safetensors"))
    print(f"shard arrays: {total:,} bytes in {len(list(shards.glob('shard-*.npz')))} shards; {steps} steps of 64 (one epoch)\n")
    print("| processes | shard bytes read per rank (min / max) | share of the data | share of 1 process's | "
          "max loss difference vs 1 process | max weight difference |")
    print("|---:|---|---:|---:|---:|---:|")
    one_losses, one_weights = runs[1][1], runs[1][2]
    for n, (read, losses, weights) in runs.items():
        dl = max(abs(a - b) for a, b in zip(losses, one_losses))
        dw = max(float((weights[k] - one_weights[k]).abs().max()) for k in weights)
        print(f"| {n} | {min(read):,} / {max(read):,} | {max(read) / total:.3f} | {max(read) / runs[1][0][0]:.3f} | "
              f"{dl:.2e} | {dw:.2e} |")


if __name__ == "__main__":
    main()
