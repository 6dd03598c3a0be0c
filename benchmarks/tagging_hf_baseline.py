"""The reference for docs/results.md "Named entities": CoNLL-2003 fine-tuning with transformers.

`transformers.BertForTokenClassification` in a plain PyTorch loop, with everything else held equal
to `bertkit finetune --task conll2003`: the same sentences and BIO tags (bertkit's reader), each word
labelled on its first piece and the other pieces ignored by the loss (-100, as in transformers'
run_ner example), the same optimizer (torch's fused AdamW from `build_optimizer`, no decay on
biases and LayerNorm weights), the same linear warm-up/decay schedule, clipping at 1.0, dropout
0.1, fp32 on CPU. Tokenization is transformers' BertTokenizerFast on the pre-split words
(`is_split_into_words`). Batches: a shuffled order, each padded to its longest row (`--batching
bucketed` uses bertkit's length buckets instead). A sentence longer than `--max-len` pieces is
truncated, as the plain loop does; its cut-off words are predicted O, so that both implementations
are scored against the same gold entities. Scored with `seqeval` (conlleval's definition).

    python benchmarks/tagging_hf_baseline.py --data-dir ../shared/data/conll2003 --out runs/ner/hf-s1 \
        --epochs 2 --lr 1e-4 --seed 1 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bertkit.pretrained import resolve
from bertkit.tagging.conll import load_tagging_data
from bertkit.batches import random_batches, sorted_batches
from bertkit.train.optim import apply_gradients, build_optimizer, linear_warmup_decay, warmup_steps_for


def encode(tok, sentences, index, max_len):
    """(ids, targets with -100 off first pieces, first-piece position of each word or -1 if cut off)."""
    enc = tok([s.words for s in sentences], is_split_into_words=True, truncation=True, max_length=max_len)
    ids, targets, firsts = [], [], []
    for i, s in enumerate(sentences):
        word_ids = enc.word_ids(i)
        first = [-1] * len(s.words)
        target = [-100] * len(word_ids)
        for pos, w in enumerate(word_ids):
            if w is not None and first[w] < 0:
                first[w] = pos
                target[pos] = index[s.tags[w]]
        ids.append(enc["input_ids"][i])
        targets.append(target)
        firsts.append(first)
    return ids, targets, firsts


def collate(ids, rows, targets=None):
    width = max(len(ids[i]) for i in rows)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    m = torch.zeros_like(x)
    y = torch.full_like(x, -100)
    for r, i in enumerate(rows):
        n = len(ids[i])
        x[r, :n] = torch.tensor(ids[i])
        m[r, :n] = 1
        if targets is not None:
            y[r, :n] = torch.tensor(targets[i])
    return x, m, y


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", required=True)
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--epsilon", type=float, default=1e-6)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--batching", choices=("random", "bucketed"), default="random")
    p.add_argument("--max-train-examples", type=int, help="train on a seeded random subset of N sentences (smoke runs)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from transformers import BertForTokenClassification, BertTokenizerFast

    wall = time.perf_counter()
    data = load_tagging_data("conll2003", args.data_dir)
    index = {label: i for i, label in enumerate(data.labels)}
    directory = resolve(args.model)
    tok = BertTokenizerFast.from_pretrained(directory)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = BertForTokenClassification.from_pretrained(
        directory, num_labels=len(data.labels), id2label=dict(enumerate(data.labels)), label2id=index)
    train = data.train
    if args.max_train_examples:
        train = [train[i] for i in np.sort(rng.permutation(len(train))[: args.max_train_examples])]
    train_ids, train_targets, _ = encode(tok, train, index, args.max_len)
    lengths = np.array([len(i) for i in train_ids])
    splits = {name: (sentences, *encode(tok, sentences, index, args.max_len)) for name, sentences in data.dev.items()}

    def score(sentences, ids, _, firsts):
        lens = np.array([len(i) for i in ids])
        pred = [["O"] * len(s.words) for s in sentences]
        with torch.no_grad():
            for rows in sorted_batches(lens, 128):
                x, m, _ = collate(ids, rows)
                best = model(input_ids=x, attention_mask=m).logits.argmax(-1).numpy()
                for r, i in enumerate(rows):
                    pred[i] = [data.labels[best[r, f]] if f >= 0 else "O" for f in firsts[i]]
        gold = [s.tags for s in sentences]
        per_type = classification_report(gold, pred, output_dict=True)
        return {"precision": precision_score(gold, pred), "recall": recall_score(gold, pred), "f1": f1_score(gold, pred),
                "per_type": {k: {"precision": v["precision"], "recall": v["recall"], "f1": v["f1-score"], "support": int(v["support"])}
                             for k, v in per_type.items() if not k.endswith(" avg")}}

    steps = math.ceil(len(train_ids) / args.batch_size) * args.epochs
    opt = build_optimizer(model, "adamw", args.lr, args.weight_decay, args.epsilon)
    sched = linear_warmup_decay(opt, warmup_steps_for(steps, args.warmup_ratio), steps)
    epochs, best = [], None
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        total, seen = 0.0, 0
        if args.batching == "bucketed":
            batches = random_batches(lengths, args.batch_size, rng, bucket=50)
        else:
            order = rng.permutation(len(lengths))
            batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
        for rows in batches:
            x, m, y = collate(train_ids, rows, train_targets)
            logits = model(input_ids=x, attention_mask=m).logits
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
            loss.backward()
            apply_gradients(model.parameters(), opt, sched, 1.0)
            total += loss.item() * len(rows)
            seen += len(rows)
        train_seconds = time.perf_counter() - t0
        model.eval()
        row = {"epoch": epoch, "train_loss": total / seen, "train_seconds": round(train_seconds, 2),
               **{name: score(*split) for name, split in splits.items()}}
        epochs.append(row)
        print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}
                         | {n: {"f1": row[n]["f1"]} for n in splits}), file=sys.stderr, flush=True)
        if best is None or row["dev"]["f1"] > best["dev"]["f1"]:
            best = row
    result = {"task": "conll2003", "implementation": "transformers", "best_epoch": best["epoch"],
              **{n: best[n] for n in splits}, "main_metric": "f1", "epochs": epochs,
              "train_seconds_per_epoch": [r["train_seconds"] for r in epochs],
              "wall_seconds": round(time.perf_counter() - wall, 2), "hyperparameters": vars(args),
              "torch_threads": torch.get_num_threads(),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "eval_results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("task", "best_epoch", "train_seconds_per_epoch", "wall_seconds")}
                     | {n: {"f1": best[n]["f1"]} for n in splits}))


if __name__ == "__main__":
    main()
