"""The reference for docs/results.md: the same fine-tuning with Hugging Face transformers.

`transformers.BertForSequenceClassification` in a plain PyTorch loop, with everything else held
equal to `bertkit finetune`: the same examples (bertkit's task readers), the same optimizer (torch's
fused AdamW from `build_optimizer`, over the same parameter groups: no decay on biases and LayerNorm weights), the same linear warm-up/decay schedule, gradient clipping at 1.0,
dropout 0.1, fp32 on CPU. Tokenization is transformers' own BertTokenizerFast. Batches: `--batching
random` (default) is the plain loop as usually written, a shuffled order and each batch padded to
its longest row; `--batching bucketed` uses bertkit's length-bucketed sampler (same seed, same order). Prints and writes
the dev metrics of the best epoch and the training seconds of each epoch (evaluation excluded).

    python benchmarks/finetune_hf_baseline.py --task mrpc --data-dir ../shared/data/glue_data \
        --model all-minilm-l6-v2 --out runs/hf-mrpc-s0 --epochs 2 --lr 1e-4 --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bertkit.pretrained import resolve
from bertkit.tasks.metrics import compute_metrics
from bertkit.tasks.readers import get_task, load_task_data
from bertkit.batches import random_batches, sorted_batches
from bertkit.train.optim import apply_gradients, build_optimizer, linear_warmup_decay, warmup_steps_for


def encode(tok, examples, max_len):
    pair = examples[0].text_b is not None
    enc = tok([e.text_a for e in examples], [e.text_b for e in examples] if pair else None,
              truncation="longest_first", max_length=max_len)
    return enc["input_ids"], enc["token_type_ids"]


def collate(ids, segs, rows):
    width = max(len(ids[i]) for i in rows)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    s = torch.zeros_like(x)
    m = torch.zeros_like(x)
    for r, i in enumerate(rows):
        n = len(ids[i])
        x[r, :n] = torch.tensor(ids[i])
        s[r, :n] = torch.tensor(segs[i])
        m[r, :n] = 1
    return x, s, m


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--task", required=True)
    p.add_argument("--data-dir")
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
    p.add_argument("--max-train-examples", type=int, help="train on a seeded random subset of N examples (bertkit's subset)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import BertForSequenceClassification, BertTokenizerFast

    wall = time.perf_counter()
    task = get_task(args.task)
    data = load_task_data(task, args.data_dir)
    directory = resolve(args.model)
    tok = BertTokenizerFast.from_pretrained(directory)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    n_labels = 1 if task.kind == "regression" else len(data.labels)
    model = BertForSequenceClassification.from_pretrained(directory, num_labels=n_labels)
    index = {l: i for i, l in enumerate(data.labels or [])}
    target = (lambda e: float(e.label)) if task.kind == "regression" else (lambda e: index[e.label])
    train = data.train
    if args.max_train_examples and args.max_train_examples < len(train):  # the rows bertkit finetune keeps
        train = [train[i] for i in np.sort(rng.permutation(len(train))[: args.max_train_examples])]
    train_ids, train_segs = encode(tok, train, args.max_len)
    y_train = torch.tensor([target(e) for e in train])
    dev_name, dev = next(iter(data.dev.items()))
    dev_ids, dev_segs = encode(tok, dev, args.max_len)
    y_dev = np.array([target(e) for e in dev])
    lengths = np.array([len(i) for i in train_ids])
    dev_lengths = np.array([len(i) for i in dev_ids])

    steps = math.ceil(len(train_ids) / args.batch_size) * args.epochs
    # The optimizer bertkit finetune uses, so that the per-epoch times compare the models, not the kernels.
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
            x, s, m = collate(train_ids, train_segs, rows)
            logits = model(input_ids=x, token_type_ids=s, attention_mask=m).logits
            y = y_train[rows]
            loss = F.mse_loss(logits[:, 0], y.float()) if task.kind == "regression" else F.cross_entropy(logits, y)
            loss.backward()
            apply_gradients(model.parameters(), opt, sched, 1.0)
            total += loss.item() * len(rows)
            seen += len(rows)
        train_seconds = time.perf_counter() - t0
        model.eval()
        out = np.zeros((len(dev_ids), n_labels), dtype=np.float32)
        with torch.no_grad():
            for rows in sorted_batches(dev_lengths, 128):
                x, s, m = collate(dev_ids, dev_segs, rows)
                out[rows] = model(input_ids=x, token_type_ids=s, attention_mask=m).logits.numpy()
        preds = out[:, 0] if task.kind == "regression" else out.argmax(-1)
        metrics = compute_metrics(task.metric_set, y_dev, preds)
        row = {"epoch": epoch, "train_loss": total / seen, "train_seconds": round(train_seconds, 2), dev_name: metrics}
        epochs.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if best is None or metrics[task.main_metric] > best[dev_name][task.main_metric]:
            best = row
    result = {"task": task.name, "implementation": "transformers", "best_epoch": best["epoch"], dev_name: best[dev_name],
              "main_metric": task.main_metric, "epochs": epochs, "train_seconds_per_epoch": [r["train_seconds"] for r in epochs],
              "wall_seconds": round(time.perf_counter() - wall, 2), "hyperparameters": vars(args),
              "torch_threads": torch.get_num_threads(),
              "peak_rss_mb": round(__import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss / 1024, 1)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "eval_results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("task", "best_epoch", dev_name, "train_seconds_per_epoch")}))


if __name__ == "__main__":
    main()
