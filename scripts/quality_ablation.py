"""Why bertkit's fine-tuning scores below transformers' (issue 18): each suspect switched off in turn.

Every variant trains the same checkpoint (all-minilm-l6-v2) on the same data with the same recipe
(AdamW, weight decay 0.01 off biases and LayerNorm weights, linear warm-up 10% then decay, clipping
at 1.0, dropout 0.1) for several seeds; the table gives each variant's mean, spread and per-seed dev
scores. Tasks:
- `tags`: CoNLL-2003 `eng.testa` as the training set, the first 1,500 sentences of `eng.testb` as dev,
  1 epoch, lr 1e-4, batch 32, entity F1 (the split where the gap shows in minutes);
- `sst2`: a seeded subset of SST-2 train (`--sst2-examples`, default 4,000), the whole dev set, 1 epoch,
  lr 1e-4, batch 32, accuracy;
- `squad`: SQuAD 1.1's article split (`scripts/squad_splits.py`: 7,595 training questions on 32
  articles, 2,975 evaluation questions on 16 others), 1 epoch, lr 1e-4, 16 windows x accumulate 2
  of up to 384 tokens, stride 128, F1 of the official metric.
Variants (`VARIANTS`): bertkit as it was (batches sorted by length in groups of 50); one suspect changed at a time (shuffled batches without length
sorting, PyTorch's own dropout, Adam epsilon 1e-8, the full last layer for classification); other
batchings; transformers' plain loop (benchmarks/*_hf_baseline.py) as the anchor. Jobs run `--jobs`
at a time, one torch thread each; each writes RUNS/TASK/VARIANT-sSEED/ and is skipped when done, so
an interrupted run continues.

    python scripts/quality_ablation.py --task tags --seeds 2 3 4
    python scripts/quality_ablation.py --task sst2 --seeds 0 1 2 --variants bertkit random-batches transformers
    python scripts/quality_ablation.py --task squad --seeds 0 1 2 --variants random-batches transformers
    python scripts/quality_ablation.py --task squad --seeds 2 0 1 --variants bf16-2-epochs transformers
    python scripts/quality_ablation.py --task squad --seeds 0 1 2 --variants bf16-360-steps transformers
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

# variant -> (implementation, extra finetune flags, patch applied in the child before training)
VARIANTS = {
    "bertkit": ("bertkit", ["--bucket-batches", "50"], None),  # as it was before issue 18: groups of 50 batches by length
    "random-batches": ("bertkit", ["--bucket-batches", "1"], None),
    "bucket-4": ("bertkit", ["--bucket-batches", "4"], None),
    "bucket-8": ("bertkit", ["--bucket-batches", "8"], None),
    "torch-dropout": ("bertkit", ["--bucket-batches", "50"], "torch_dropout"),
    "eps-1e-8": ("bertkit", ["--bucket-batches", "50", "--epsilon", "1e-8"], None),
    "full-last-layer": ("bertkit", ["--bucket-batches", "50"], "full_last_layer"),
    "random-2-epochs": ("bertkit", ["--epochs", "2"], None),  # time-to-accuracy: bertkit spends its speed on a second epoch
    "bf16": ("bertkit", ["--precision", "bf16"], None),  # issue 19: bf16 autocast against fp32 (random-batches)
    # time-to-accuracy on SQuAD: bf16 autocast (CPUs with avx512_bf16 or AMX) buys the second epoch
    "bf16-2-epochs": ("bertkit", ["--epochs", "2", "--precision", "bf16"], None),
    # the same within transformers' one-epoch wall time with room to spare: 1.5 epochs (360 steps; the schedule ends there)
    "bf16-360-steps": ("bertkit", ["--max-steps", "360", "--precision", "bf16"], None),
    "transformers": ("hf", [], None),
    "transformers-bucketed": ("hf", ["--batching", "bucketed"], None),
}
DEFAULT_VARIANTS = {"tags": ["bertkit", "random-batches", "torch-dropout", "eps-1e-8", "transformers"],
                    "sst2": ["bertkit", "random-batches", "torch-dropout", "eps-1e-8", "full-last-layer", "transformers"],
                    "squad": ["bertkit", "random-batches", "transformers"]}


# ---- patches (applied in the child process) -----------------------------------------------------
def torch_dropout():
    """PyTorch's dropout everywhere bertkit uses its byte-mask dropout: the kernel choice for "dropout"
    (bertkit/cpu/dispatch.py) always "torch", as bertkit.cpu.ops asks it for dropout and attention."""
    import bertkit.cpu.ops as ops

    choose = ops.kernel
    ops.kernel = lambda op, *args, **kwargs: "torch" if op == "dropout" else choose(op, *args, **kwargs)


def full_last_layer():
    """Sequence classifiers read the pooler on the full last layer, not the [CLS]-only shortcut."""
    import bertkit.model

    def forward(self, input_ids, segment_ids=None, valid_lengths=None, attention_mask=None):
        _, pooled = self.bert(input_ids, segment_ids, valid_lengths, attention_mask)
        return self.classifier(self.dropout(pooled))

    bertkit.model.BertForSequenceClassification.forward = forward


PATCHES = {"torch_dropout": torch_dropout, "full_last_layer": full_last_layer}


def child(patch: str, argv: list[str]) -> int:
    if patch != "none":
        PATCHES[patch]()
    from bertkit.cli import main

    return main(argv)


# ---- data ---------------------------------------------------------------------------------------
def conll_sentences(path: Path) -> list[str]:
    """The sentence blocks of a CoNLL file (-DOCSTART- blocks dropped), each as its lines."""
    blocks, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if current:
                blocks.append("\n".join(current))
            current = []
        elif not line.startswith("-DOCSTART-"):
            current.append(line)
    if current:
        blocks.append("\n".join(current))
    return blocks


def tags_split(runs: Path, conll: Path, dev_sentences: int = 1500) -> Path:
    """A conll2003-layout directory: eng.train = eng.testa, eng.testa (dev) = eng.testb's first sentences."""
    d = runs / "data-tags"
    if not (d / "eng.testa").is_file():
        d.mkdir(parents=True, exist_ok=True)
        (d / "eng.train").write_text("\n\n".join(conll_sentences(conll / "eng.testa")) + "\n", encoding="utf-8")
        dev = conll_sentences(conll / "eng.testb")[:dev_sentences]
        (d / "eng.testa").write_text("\n\n".join(dev) + "\n", encoding="utf-8")
    return d


def squad_split(runs: Path, squad: Path) -> Path:
    """SQuAD 1.1's article split, written once by scripts/squad_splits.py."""
    d = runs / "data-squad"
    if not (d / "squad1.1-eval.json").is_file():
        subprocess.run([sys.executable, str(REPO / "scripts" / "squad_splits.py"), str(squad), str(d)], check=True)
    return d


# ---- jobs ---------------------------------------------------------------------------------------
def command(task: str, variant: str, seed: int, out: Path, data: Path, args) -> list[str]:
    impl, flags, patch = VARIANTS[variant]
    common = ["--model", args.model, "--out", str(out), "--epochs", "1", "--lr", "1e-4", "--seed", str(seed), "--threads", "1"]
    if task == "squad":
        common += ["--batch-size", "16", "--accumulate", "2", "--max-seq-length", "384", "--doc-stride", "128",
                   "--train", str(data / "squad1.1-train.json"), "--predict", str(data / "squad1.1-eval.json")]
        if impl == "hf":
            return [sys.executable, str(REPO / "benchmarks" / "squad_hf_baseline.py"), *common, *flags]
        return [sys.executable, __file__, "--child", patch or "none", "squad", *common, *flags, "--quiet"]
    common += ["--batch-size", "32", "--max-len", "128"]
    # the HF tagging baseline reads conll2003 by itself; every other job names its task
    task_flags = ["--data-dir", str(data)] if task == "tags" else \
        ["--task", "sst-2", "--data-dir", str(data), "--max-train-examples", str(args.sst2_examples)]
    if impl == "hf":
        script = "tagging_hf_baseline.py" if task == "tags" else "finetune_hf_baseline.py"
        return [sys.executable, str(REPO / "benchmarks" / script), *task_flags, *common, *flags]
    if task == "tags":
        task_flags = ["--task", "conll2003", *task_flags]
    return [sys.executable, __file__, "--child", patch or "none", "finetune", *task_flags, *common, *flags, "--quiet"]


def score(out: Path, task: str) -> float | None:
    f = out / "eval_results.json"
    if not f.is_file():
        return None
    r = json.loads(f.read_text())
    if task == "squad":
        return r.get("f1")  # the official script's, already in percent
    dev = r.get("dev") or {}
    value = dev.get("f1") if task == "tags" else dev.get("accuracy")
    return None if value is None else 100 * value


def run_job(cmd: list[str], out: Path) -> float:
    out.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    with open(str(out) + ".log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    if rc:
        print(f"  FAILED ({rc}): {out} (see {out}.log)", flush=True)
    return time.perf_counter() - t


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1], argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("tags", "sst2", "squad"), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS))
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--sst2-examples", type=int, default=4000)
    p.add_argument("--jobs", type=int, default=2, help="jobs at a time (one torch thread each)")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "ablation")
    p.add_argument("--data", type=Path, default=DATA, help="the folder holding conll2003/, glue_data/ and squad/")
    args = p.parse_args(argv)
    variants = args.variants or DEFAULT_VARIANTS[args.task]
    runs = args.runs / (f"sst2-{args.sst2_examples}" if args.task == "sst2" else args.task)
    data = {"tags": lambda: tags_split(args.runs, args.data / "conll2003"), "sst2": lambda: args.data / "glue_data",
            "squad": lambda: squad_split(args.runs, args.data / "squad")}[args.task]()
    jobs = [(v, s, runs / f"{v}-s{s}") for s in args.seeds for v in variants]
    todo = [(v, s, out) for v, s, out in jobs if score(out, args.task) is None]
    print(f"{args.task}: {len(jobs)} jobs, {len(todo)} to run, {args.jobs} at a time ({time.strftime('%H:%M:%S')})", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        for (v, s, out), seconds in zip(todo, pool.map(lambda j: run_job(command(args.task, j[0], j[1], j[2], data, args), j[2]), todo)):
            print(f"  {v} seed {s}: {score(out, args.task)} ({seconds:.0f} s)", flush=True)
    metric = {"tags": "entity F1", "sst2": "accuracy", "squad": "F1"}[args.task]
    print(f"\n| variant | mean {metric} | std | min-max | per seed ({', '.join(map(str, args.seeds))}) |")
    print("|---|---:|---:|---|---|")
    for v in variants:
        values = [score(runs / f"{v}-s{s}", args.task) for s in args.seeds]
        got = [x for x in values if x is not None]
        if not got:
            continue
        spread = statistics.stdev(got) if len(got) > 1 else 0.0
        print(f"| {v} | {statistics.mean(got):.2f} | {spread:.2f} | {min(got):.2f}-{max(got):.2f} | "
              + " / ".join("-" if x is None else f"{x:.2f}" for x in values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
