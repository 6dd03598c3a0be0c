"""d2l's "Pretraining BERT" chapter in bertkit's commands, on WikiText-2 (issue 21, item 8).

    python scripts/d2l_wikitext2.py [--out runs/d2l] [--steps 150]

d2l (chapter_natural-language-processing-pretraining/bert-pretraining.md): `load_data_wiki(512, 64)`
on wiki.train.tokens, `BERTModel(len(vocab), num_hiddens=128, ffn_num_hiddens=256, num_heads=2,
num_blks=2, dropout=0.2)`, `torch.optim.Adam(lr=0.01)` at a constant rate, no clipping, and
`train_bert(train_iter, net, loss, len(vocab), devices, 50)`: 50 steps of 512 sentence pairs, printing
the mean over those steps of each step's MLM and NSP loss. Here:

1. shards    `bertkit pretrain-data` at d2l's sequence length 64 with at most 10 predictions per
             sequence (d2l's round(64 x 0.15)), no short targets, bert-base-uncased's WordPiece
             vocabulary (all-minilm-l6-v2's): WikiText-2 *valid* (the train file is not available
             here) as training data, one instance set with masks drawn afresh each epoch
             (`--dynamic-masking`), and WikiText-2 *test* as the held-out set, masks fixed (seed 7).
2. pretrain  `bertkit pretrain --layers 2 --hidden 128 --heads 2 --ffn 256 --dropout 0.2
             --batch-size 512 --optimizer adamw --weight-decay 0 --epsilon 1e-8 --lr 0.01
             --warmup-ratio 0 --max-grad-norm 0`, one metrics row per step, the held-out set scored
             every `--eval-interval` steps (50: d2l's run length) and at the end. bertkit's schedule
             decays the rate linearly to 0 at `--steps`; d2l keeps it constant.
3. random    held-out scores of the untrained network (same shape, same seed: pretrain's step 0).

OUT/summary.json gives, after one pass over the training instances, at every held-out scoring
(50 steps: d2l's run length) and at the end: the mean of the per-step training MLM and NSP losses since step
1 (d2l's printed figures), sentence pairs/s, and held-out MLM loss/accuracy and NSP accuracy. It also
counts the sentence pairs d2l's own reader (`_read_wiki`: paragraphs split on ' . ', adjacent
sentence pairs of at most 64 words with [CLS]/[SEP], longer pairs dropped) finds in the same files.
Steps are skipped when their output exists; one thread; commands and wall times in OUT/steps.jsonl.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from agnews_from_scratch import bertkit, log_step  # noqa: E402  one command runner: one thread, OUT/steps.jsonl
D2L_STEPS = 50  # train_bert(train_iter, net, loss, len(vocab), devices, 50)
SHAPE = ["--layers", 2, "--hidden", 128, "--heads", 2, "--ffn", 256, "--dropout", 0.2]




def d2l_pairs(path: Path, max_len: int = 64, seed: int = 0) -> dict:
    """What d2l's `_read_wiki` + `_get_nsp_data_from_paragraph` make of a WikiText file: paragraphs
    (lines with at least two ' . '-separated parts, lower-cased), adjacent sentence pairs, half of
    them with a random sentence as B, kept when the words plus 3 fit in `max_len`."""
    rng = random.Random(seed)
    lines = path.read_text(encoding="utf-8").splitlines()
    paragraphs = [[s.split() for s in line.strip().lower().split(" . ")] for line in lines if len(line.split(" . ")) >= 2]
    kept = tried = 0
    for paragraph in paragraphs:
        for i in range(len(paragraph) - 1):
            a, b = paragraph[i], paragraph[i + 1]
            if rng.random() >= 0.5:
                b = rng.choice(rng.choice(paragraphs))
            tried += 1
            kept += len(a) + len(b) + 3 <= max_len
    return {"paragraphs": len(paragraphs), "adjacent_pairs": tried, "pairs_within_64": kept}


def mean_rows(rows: list[dict], upto: int) -> dict:
    """d2l's printed figures: the mean over steps 1..upto of each step's MLM and NSP loss."""
    steps = [r for r in rows if "mlm_loss" in r and "eval_mlm_accuracy" not in r and r["step"] <= upto]
    if not steps or steps[-1]["step"] != upto or len(steps) != upto:
        raise SystemExit(f"metrics.jsonl: expected one row per step up to {upto}, found {len(steps)}")
    n = len(steps)
    return {"steps": upto, "mean_mlm_loss": sum(r["mlm_loss"] for r in steps) / n,
            "mean_nsp_loss": sum(r["nsp_loss"] for r in steps) / n,
            "last_step_mlm_loss": steps[-1]["mlm_loss"], "last_step_nsp_loss": steps[-1]["nsp_loss"],
            "median_pairs_per_s": sorted(r["examples_per_s"] for r in steps)[n // 2]}


def random_scores(run: Path, heldout: Path, seed: int) -> dict:
    import torch

    import bertkit
    from bertkit.data.loader import PretrainingLoader
    from bertkit.train.pretrain import evaluate

    torch.set_num_threads(1)
    options = json.loads((run / "options.json").read_text())
    shape = options["shape"]
    vocab_size = bertkit.load(str(run / "final"), head="pretraining").config.vocab_size
    cfg = bertkit.BertConfig(vocab_size=vocab_size, hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                             num_attention_heads=shape["heads"], intermediate_size=shape["ffn"],
                             hidden_dropout_prob=options["dropout"], attention_probs_dropout_prob=options["dropout"])
    torch.manual_seed(seed)  # as `bertkit pretrain --seed` does before building the model
    return evaluate(bertkit.BertForPreTraining(cfg), PretrainingLoader(str(heldout), 512, shuffle=False))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "wikitext-2")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "d2l")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--eval-interval", type=int, default=D2L_STEPS)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    import bertkit as bk

    vocab = bk.resolve("all-minilm-l6-v2") / "vocab.txt"
    common = ["--vocab", vocab, "--format", "wikitext", "--max-seq-length", 64, "--max-predictions-per-seq", 10,
              "--short-seq-prob", 0, "--dupe-factor", 1, "--no-progress", "--overwrite"]
    train, heldout = out / "shards" / "train", out / "shards" / "heldout"
    if not (train / "stats.json").is_file():
        bertkit(out, "shards-train", "pretrain-data", "--input", args.data / "wiki.valid.tokens", "--out", train,
                "--dynamic-masking", *common)
    if not (heldout / "stats.json").is_file():
        bertkit(out, "shards-heldout", "pretrain-data", "--input", args.data / "wiki.test.tokens", "--out", heldout,
                "--seed", 7, *common)

    run = out / "pretrain"
    if not (run / "final" / "config.json").is_file():
        bertkit(out, "pretrain", "pretrain", "--data", train, "--eval-data", heldout, *SHAPE, "--out", run,
                "--steps", args.steps, "--batch-size", 512, "--optimizer", "adamw", "--weight-decay", 0,
                "--epsilon", 1e-8, "--lr", args.lr, "--warmup-ratio", 0, "--max-grad-norm", 0, "--seed", args.seed,
                "--log-interval", 1, "--eval-interval", args.eval_interval, "--ckpt-interval", args.steps,
                "--keep-checkpoints", 1, "--no-progress")

    random_path = out / "random_init_eval.json"
    if not random_path.is_file():
        start = time.perf_counter()
        random_path.write_text(json.dumps(random_scores(run, heldout, args.seed), indent=2) + "\n")
        log_step(out, "random-eval", "scripts/d2l_wikitext2.py: random_scores()", time.perf_counter() - start)

    from bertkit.data.loader import PretrainingLoader

    per_pass = len(PretrainingLoader(str(train), 512, drop_last=True))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = {r["step"]: r for r in rows if "eval_mlm_accuracy" in r}
    points = sorted(({D2L_STEPS, per_pass, args.steps} | set(evals)) & set(range(1, args.steps + 1)))
    summary = {"d2l_reader": {f.name: d2l_pairs(args.data / f.name) for f in (args.data / "wiki.valid.tokens",
                                                                            args.data / "wiki.test.tokens")},
               "train_instances": PretrainingLoader(str(train), 512).num_instances, "steps_per_pass": per_pass,
               "random_init": json.loads(random_path.read_text()), "points": {}}
    for step in points:
        point = mean_rows(rows, step)
        if step in evals:
            point["heldout"] = {k: v for k, v in evals[step].items() if k.startswith("eval_")}
        summary["points"][str(step)] = point
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
