"""The seed's from-scratch experiment on AG News, with bertkit's own commands (issue 21, item 7).

    python scripts/agnews_from_scratch.py [--out runs/agnews] [--steps 1600] [--lr 1e-3] [--ft-epochs 2]

Only AG News' 7,600-row test.csv is available here (see ../shared/data/README.md), so it is split
in two, stratified and in file order: the first `--train-per-class` rows of each class (1,500) are
the training part, the other 400 per class the held-out part. Then:

1. split     OUT/data/{train.csv,test.csv,classes.txt}: the two parts as lines copied verbatim from
             the original CSV (the ag_news_csv layout `finetune --task ag-news` reads; test.csv is
             the held-out part); OUT/corpus/{train,heldout}.txt: one article per line (title and
             description joined as the ag-news reader joins them), a blank line after each, so that
             `--format text` reads every article as a document of its own.
2. vocab     `bertkit vocab` on the training part's corpus only: a WordPiece vocabulary, uncased.
3. shards    `bertkit pretrain-data --no-nsp` (masked LM only): training part with dynamic masking
             (new masks every epoch), held-out part with fixed masks (seed 7), both max length 128.
4. pretrain  `bertkit pretrain --config bert_4_256_4` (4 layers, hidden 256, 4 heads, FFN 1024) on
             the training shards, scored on the held-out shards at the end: OUT/pretrain-STEPSxLR/.
5. random    the same shape from the same seed, untrained (`bertkit.save(BertForPreTraining(cfg))`):
             the network the pretraining started from (OUT/random-init/).
6. mlm-eval  held-out masked-LM loss of both (`bertkit.train.pretrain.evaluate`): mean per masked
             token, and the sum over evaluation batches of each batch's mean (OUT/mlm_eval.json).
7. finetune  `bertkit finetune --task ag-news` from each, the same recipe, on train.csv, scored on
             test.csv (the held-out part): OUT/finetune/{pretrained-STEPSxLR,random-init}/.

Run again with other `--steps`/`--lr` to add another pretraining budget: steps 1-3, 5 and the
random network's fine-tuning are shared.

Every step is skipped when its output exists; every command runs with one thread
(OMP_NUM_THREADS=1, `--threads 1`), and its command line and wall time go to OUT/steps.jsonl.
OUT/summary.json and the printed table collect the results.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CLASSES = ("World", "Sports", "Business", "Sci/Tech")


def log_step(out: Path, name: str, command, seconds: float) -> None:
    with open(out / "steps.jsonl", "a") as f:
        f.write(json.dumps({"step": name, "command": command, "seconds": round(seconds, 1),
                            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")


def bertkit(out: Path, name: str, *args) -> None:
    """Run one `bertkit` command (one thread), logging its command line and wall time."""
    cmd = [sys.executable, "-m", "bertkit", *map(str, args)]
    print(f"[{name}] {' '.join(cmd[2:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=ENV, cwd=REPO)
    log_step(out, name, ["bertkit", *map(str, args)], time.perf_counter() - start)


def article_text(title: str, description: str) -> str:
    """The text `finetune --task ag-news` reads for a row (backslashes stand for line breaks)."""
    return " ".join(f"{title} {description}".replace("\\", " ").split())


def split(source: Path, out: Path, per_class: int) -> None:
    data, corpus = out / "data", out / "corpus"
    if (data / "test.csv").is_file() and (corpus / "heldout.txt").is_file():
        return
    lines = (source / "test.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    seen = {c: 0 for c in "1234"}
    parts = {"train": [], "heldout": []}
    for number, line in enumerate(lines, 1):
        rows = list(csv.reader([line]))
        if len(rows) != 1 or len(rows[0]) != 3 or rows[0][0] not in seen:
            raise SystemExit(f"{source / 'test.csv'}:{number}: not a one-line row of class, title, description")
        index, title, description = rows[0]
        seen[index] += 1
        parts["train" if seen[index] <= per_class else "heldout"].append((line, article_text(title, description)))
    data.mkdir(parents=True, exist_ok=True)
    corpus.mkdir(parents=True, exist_ok=True)
    for name, csv_name in (("train", "train.csv"), ("heldout", "test.csv")):
        (data / csv_name).write_text("".join(line for line, _ in parts[name]), encoding="utf-8")
        (corpus / f"{name}.txt").write_text("".join(f"{text}\n\n" for _, text in parts[name]), encoding="utf-8")
    (data / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES), encoding="utf-8")
    print(f"[split] {len(parts['train'])} training rows, {len(parts['heldout'])} held-out rows", flush=True)


def mlm_scores(checkpoint: Path, shards: Path, batch_size: int) -> dict:
    """Held-out masked-LM figures of a checkpoint: bertkit's evaluate() (mean loss per masked token,
    accuracy) and, batch by batch, each batch's mean loss, summed over the batches."""
    import torch

    import bertkit
    from bertkit.data.loader import PretrainingLoader
    from bertkit.device import evaluating
    from bertkit.train.pretrain import evaluate, mlm_nsp_sums

    torch.set_num_threads(1)
    model = bertkit.load(str(checkpoint), head="pretraining")
    data = PretrainingLoader(str(shards), batch_size, shuffle=False)
    scores = evaluate(model, data)
    batch_means = []
    with evaluating(model):
        for (part,) in data.rank_batches(0, 0, 1):
            s = mlm_nsp_sums(model, part, data.nsp)
            batch_means.append(float(s["mlm_loss"]) / float(part["masked_lm_weights"].sum()))
    return {**scores, "eval_batch_size": batch_size, "eval_batches": len(batch_means),
            "sum_of_batch_mean_losses": sum(batch_means)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ag_news_csv")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "agnews")
    p.add_argument("--train-per-class", type=int, default=1500)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--steps", type=int, default=1600, help="pretraining steps")
    p.add_argument("--batch-size", type=int, default=32, help="pretraining batch (articles)")
    p.add_argument("--lr", type=float, default=1e-3, help="pretraining peak learning rate")
    p.add_argument("--max-minutes", type=float, default=18, help="pretraining wall-time cap")
    p.add_argument("--ft-epochs", type=int, default=2)
    p.add_argument("--ft-lr", type=float, default=2e-4)
    p.add_argument("--ft-batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    split(args.data, out, args.train_per_class)

    vocab = out / "vocab"
    if not (vocab / "vocab.txt").is_file():
        bertkit(out, "vocab", "vocab", "--input", out / "corpus" / "train.txt", "--size", args.vocab_size, "--out", vocab)

    shards = out / "shards"
    if not (shards / "train" / "stats.json").is_file():
        bertkit(out, "shards-train", "pretrain-data", "--input", out / "corpus" / "train.txt", "--vocab", vocab,
                "--out", shards / "train", "--format", "text", "--no-nsp", "--dynamic-masking", "--dupe-factor", 1,
                "--max-seq-length", 128, "--no-progress", "--overwrite")
    if not (shards / "heldout" / "stats.json").is_file():
        bertkit(out, "shards-heldout", "pretrain-data", "--input", out / "corpus" / "heldout.txt", "--vocab", vocab,
                "--out", shards / "heldout", "--format", "text", "--no-nsp", "--dupe-factor", 1, "--seed", 7,
                "--max-seq-length", 128, "--no-progress", "--overwrite")

    tag = f"{args.steps}x{args.lr:g}"  # one pretraining per budget and rate; the other steps are shared
    run = out / f"pretrain-{tag}"
    if not (run / "final" / "config.json").is_file():
        bertkit(out, "pretrain", "pretrain", "--data", shards / "train", "--eval-data", shards / "heldout",
                "--config", "bert_4_256_4", "--out", run, "--steps", args.steps, "--batch-size", args.batch_size,
                "--lr", args.lr, "--warmup-ratio", 0.05, "--seed", args.seed, "--max-minutes", args.max_minutes,
                "--eval-interval", args.steps, "--ckpt-interval", args.steps, "--keep-checkpoints", 1,
                "--log-interval", 10, "--no-progress")

    random_init = out / "random-init"
    if not (random_init / "config.json").is_file():
        import torch

        import bertkit as bk

        trained = bk.load(str(run / "final"), head="pretraining")
        cfg = bk.BertConfig.from_preset("bert_4_256_4", vocab_size=trained.config.vocab_size)
        torch.manual_seed(args.seed)  # what `bertkit pretrain --seed` does before building the model
        bk.save(bk.BertForPreTraining(cfg), random_init, trained.tokenizer, info={"note": "untrained, pretrain's step-0 weights"})

    models = {f"pretrained-{tag}": run / "final", "random-init": random_init}
    scores_path = out / "mlm_eval.json"
    scores = json.loads(scores_path.read_text()) if scores_path.is_file() else {}
    for name, path in models.items():
        if name not in scores:
            start = time.perf_counter()
            scores[name] = mlm_scores(path, shards / "heldout", args.batch_size)
            scores_path.write_text(json.dumps(scores, indent=2) + "\n")
            log_step(out, f"mlm-eval-{name}", f"scripts/agnews_from_scratch.py: mlm_scores({path})", time.perf_counter() - start)

    for name, model in models.items():
        ft = out / "finetune" / name
        if not (ft / "eval_results.json").is_file():
            bertkit(out, f"finetune-{name}", "finetune", "--task", "ag-news", "--data-dir", out / "data", "--model", model,
                    "--out", ft, "--epochs", args.ft_epochs, "--lr", args.ft_lr, "--batch-size", args.ft_batch_size,
                    "--max-len", 128, "--seed", args.seed, "--threads", 1, "--quiet")

    summary = {"mlm": scores, "finetune": {}}
    for ft in sorted((out / "finetune").glob("*/eval_results.json")):
        summary["finetune"][ft.parent.name] = json.loads(ft.read_text())
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n| model | held-out MLM loss / masked token | MLM accuracy | sum of batch means | AG News accuracy |")
    for name in sorted(set(scores) & set(summary["finetune"])):
        s, ft = scores[name], summary["finetune"][name]
        print(f"| {name} | {s['eval_mlm_loss']:.3f} | {s['eval_mlm_accuracy']:.3f} | "
              f"{s['sum_of_batch_mean_losses']:.1f} ({s['eval_batches']} batches of {s['eval_batch_size']}) | "
              f"{ft['dev']['accuracy']:.4f} (epochs: {', '.join(str(e['dev_accuracy']) for e in ft['epochs'])}) |")


if __name__ == "__main__":
    main()
