"""Training-step speed, bertkit vs transformers, interleaved so a busy shared machine slows both alike.

The same fine-tuning batches (a task's training set; a shuffled order, or length-sorted groups of 50 batches, seed 0) go
through a training step (forward, cross-entropy / MSE, backward, clip, AdamW step) of bertkit's
BertForSequenceClassification and of transformers' (sdpa attention), alternating batch by batch:
bertkit on batch i, then transformers on batch i. Prints per-implementation seconds and the ratio.

    python benchmarks/finetune_speed.py --task mrpc --data-dir ../shared/data/glue_data --batches 16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

import bertkit
from bertkit.pretrained import resolve
from bertkit.tasks.readers import get_task, load_task_data
from bertkit.batches import random_batches
from bertkit.train.finetune import Encoded
from bertkit.train.optim import param_groups


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="mrpc")
    p.add_argument("--data-dir")
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--threads", type=int)
    p.add_argument("--batching", choices=("bucketed", "random"), default="random",
                   help="random: shuffled batches, as bertkit finetune draws them since issue 18 (default); "
                        "bucketed: length-sorted groups of 50 batches (--bucket-batches 50)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import BertForSequenceClassification

    task = get_task(args.task)
    data = load_task_data(task, args.data_dir)
    n_labels = 1 if task.kind == "regression" else len(data.labels)
    torch.manual_seed(0)
    ours = bertkit.load(args.model, head=task.head, num_labels=n_labels)
    hf = BertForSequenceClassification.from_pretrained(resolve(args.model), num_labels=n_labels, attn_implementation="sdpa")
    hf.classifier.load_state_dict(ours.classifier.state_dict())
    enc = Encoded(ours.tokenizer, data.train, task, data.labels, args.max_len)
    if args.batching == "bucketed":
        batches = random_batches(enc.lengths, args.batch_size, np.random.default_rng(0), bucket=50)[: args.batches + 1]
    else:
        order = np.random.default_rng(0).permutation(len(enc))
        batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)][: args.batches + 1]
    models = {"bertkit": ours.train(), "transformers": hf.train()}
    opts = {k: torch.optim.AdamW(param_groups(m, 0.01), lr=1e-5, eps=1e-6) for k, m in models.items()}
    seconds = {k: [] for k in models}
    tokens = padded = 0
    for i, rows in enumerate(batches):
        ids, segs, lens, y = enc.batch(rows)
        mask = (torch.arange(ids.shape[1])[None, :] < lens[:, None]).long()
        for name, model in models.items():
            t0 = time.perf_counter()
            if name == "bertkit":
                logits = model(ids, segs, lens)
            else:
                logits = model(input_ids=ids, token_type_ids=segs, attention_mask=mask).logits
            loss = F.mse_loss(logits[:, 0], y) if task.kind == "regression" else F.cross_entropy(logits, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            if i > 0:  # batch 0 warms both up
                seconds[name].append(time.perf_counter() - t0)
        if i > 0:
            tokens += int(lens.sum())
            padded += ids.numel()
    total = {k: sum(v) for k, v in seconds.items()}
    ratios = [h / b for b, h in zip(seconds["bertkit"], seconds["transformers"])]
    result = {
        "task": task.name, "batching": args.batching, "batches": args.batches, "batch_size": args.batch_size, "real_tokens": tokens, "padded_tokens": padded,
        "threads": torch.get_num_threads(),
        "seconds": {k: round(v, 2) for k, v in total.items()},
        "tokens_per_s": {k: round(tokens / v, 1) for k, v in total.items()},
        "speedup_total": round(total["transformers"] / total["bertkit"], 3),
        "speedup_median_per_batch": round(float(np.median(ratios)), 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
