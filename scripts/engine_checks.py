"""The training engine's promises on real data (issue 19): N processes = 1, and SIGKILL + --resume = never stopped.

    python scripts/engine_checks.py --data ../shared/data --runs runs/engine

For `finetune` (SST-2, a seeded subset) and `squad` (SQuAD 1.1's article split, a subset of its
questions), with all-minilm-l6-v2:
- **processes**: one process against `torchrun --nproc-per-node 2` (gloo) with the same global batch,
  from a copy of the checkpoint with dropout 0 (each process draws its own dropout masks, so with
  dropout on the two runs differ by design); prints the largest weight difference and the scores;
- **resume**: a run killed with SIGKILL once a mid-epoch checkpoint is written, then `--resume`,
  against the same run never stopped (dropout on); prints whether every weight is bit-for-bit equal.
Every job runs on one thread (torchrun: one per process). Writes under RUNS/ and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def bertkit(*args, torchrun: int = 0) -> float:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun)] if torchrun \
        else [sys.executable]
    t = time.perf_counter()
    proc = subprocess.run([*launcher, "-m", "bertkit", *map(str, args)], capture_output=True, text=True, env=ENV)
    if proc.returncode:
        raise SystemExit(f"bertkit {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def killed_then_resumed(args: list, out: Path, step: int) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "bertkit", *map(str, args)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not (out / f"checkpoint-{step}").is_dir():
        if proc.poll() is not None:
            raise SystemExit(f"the run ended before checkpoint-{step}:\n{proc.stderr.read().decode()[-3000:]}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists(), "finished before the kill"
    bertkit(*args, "--resume")


def weights(directory: Path):
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


def max_difference(a: Path, b: Path, skip=()) -> float:
    wa, wb = weights(a), weights(b)
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa if k not in skip)


def bitwise_equal(a: Path, b: Path) -> bool:
    import torch

    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def no_dropout_copy(model: str, out: Path) -> Path:
    import bertkit

    source = bertkit.resolve(model)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "engine")
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--sst2-examples", type=int, default=512)
    p.add_argument("--squad-questions", type=int, default=96)
    args = p.parse_args()
    if args.runs.exists():
        shutil.rmtree(args.runs)
    args.runs.mkdir(parents=True)
    squad_dir = args.runs / "squad-data"
    subprocess.run([sys.executable, str(REPO / "scripts" / "squad_splits.py"), str(args.data / "squad"), str(squad_dir)],
                   check=True, capture_output=True)
    plain = no_dropout_copy(args.model, args.runs / "minilm-no-dropout")

    def finetune(model, out, *extra):
        return ["finetune", "--task", "sst-2", "--data-dir", args.data / "glue_data", "--model", model, "--out", out,
                "--max-train-examples", args.sst2_examples, "--epochs", "2", "--batch-size", "16", "--lr", "5e-5",
                "--threads", "1", "--quiet", *extra]

    def squad(model, out, *extra):
        return ["squad", "--train", squad_dir / "squad1.1-train.json", "--model", model, "--out", out,
                "--max-train-examples", args.squad_questions, "--epochs", "2", "--batch-size", "8", "--lr", "5e-5",
                "--max-seq-length", "192", "--doc-stride", "64", "--threads", "1", "--quiet", *extra]

    rows = []
    for job, make in (("finetune sst-2", finetune), ("squad 1.1", squad)):
        one, two = args.runs / f"{job.split()[0]}-1proc", args.runs / f"{job.split()[0]}-2proc"
        t1 = bertkit(*make(plain, one, "--epochs", "1"))
        t2 = bertkit(*make(plain, two, "--epochs", "1"), torchrun=2)
        # a span head's bias has a true gradient of 0 (a softmax's gradient sums to 0 over positions):
        # it moves by rounding noise that Adam scales up, so it is shown apart
        skip = ("qa_outputs.bias",)
        diff = max_difference(one, two, skip)
        extra = ""
        if job.startswith("finetune"):
            a, b = (json.loads((d / "eval_results.json").read_text())["dev"]["accuracy"] for d in (one, two))
            extra = f"dev accuracy {100 * a:.2f} / {100 * b:.2f}"
        else:
            wa, wb = weights(one)["qa_outputs.bias"], weights(two)["qa_outputs.bias"]
            extra = f"qa_outputs.bias (true gradient 0) {wa.abs().max():.1e} / {wb.abs().max():.1e}"
        rows.append((job, "1 process vs torchrun 2 (gloo), dropout 0, 1 epoch", f"max weight difference {diff:.2e}; {extra}",
                     f"{t1:.0f} s / {t2:.0f} s"))
        print(rows[-1], flush=True)

        full, killed = args.runs / f"{job.split()[0]}-full", args.runs / f"{job.split()[0]}-killed"
        interval, kill_at = (8, 40) if job.startswith("finetune") else (4, 16)
        t = bertkit(*make(args.model, full, "--ckpt-interval", interval))
        killed_then_resumed(make(args.model, killed, "--ckpt-interval", interval), killed, kill_at)
        rows.append((job, f"SIGKILL after checkpoint-{kill_at} (mid-epoch), then --resume; 2 epochs, dropout on",
                     f"weights bit-for-bit equal to the run never stopped: {bitwise_equal(full, killed)}", f"{t:.0f} s"))
        print(rows[-1], flush=True)

    print("\n| job | check | result | wall time |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
