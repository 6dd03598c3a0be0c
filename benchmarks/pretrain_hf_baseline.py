"""The reference for docs/results.md: transformers' BertForPreTraining in a plain loop, same everything.

Same shards in the same order (bertkit's loader, same seed), same initial weights (bertkit's
initialisation, saved and loaded by transformers), same optimizer, schedule, clipping and batch as
`bertkit pretrain`, and the same wall-clock budget. transformers runs its standard head (all
positions) and SDPA attention. The final model is saved with `save_pretrained`; evaluate it with
`benchmarks/pretrain_eval.py` next to bertkit's.

    python benchmarks/pretrain_hf_baseline.py --data shards-train --out runs/hf --config bert_4_256_4 \
        --steps 4000 --batch-size 32 --lr 5e-4 --warmup-ratio 0.05 --max-minutes 30
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

import bertkit
from bertkit.config import BertConfig
from bertkit.data.loader import PretrainingLoader
from bertkit.model import BertForPreTraining
from bertkit.train.optim import apply_gradients, build_optimizer, linear_warmup_decay, warmup_steps_for


def hf_labels(batch: dict) -> torch.Tensor:
    """transformers' MLM labels: the original id at each masked position, -100 elsewhere."""
    labels = torch.full_like(batch["input_ids"], -100)
    real = batch["masked_lm_weights"] > 0
    rows = torch.arange(labels.shape[0])[:, None].expand_as(real)
    labels[rows[real], batch["masked_lm_positions"][real]] = batch["masked_lm_ids"][real]
    return labels


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--config", default="bert_4_256_4")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--epsilon", type=float, default=1e-6)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--log-interval", type=int, default=10)
    args = p.parse_args()
    from transformers import BertForPreTraining as HFBertForPreTraining

    data = PretrainingLoader(args.data, args.batch_size, seed=args.seed, drop_last=True)
    torch.manual_seed(args.seed)  # bertkit pretrain initialises exactly like this
    init = BertForPreTraining(BertConfig.from_preset(args.config, vocab_size=data.vocab_size))
    args.out.mkdir(parents=True, exist_ok=True)
    bertkit.save(init, args.out / "init", data.tokenizer())
    model = HFBertForPreTraining.from_pretrained(args.out / "init", attn_implementation="sdpa").train()
    optimizer = build_optimizer(model, "adamw", lr=args.lr, weight_decay=args.weight_decay, epsilon=args.epsilon)
    scheduler = linear_warmup_decay(optimizer, warmup_steps_for(args.steps, args.warmup_ratio), args.steps)

    log = open(args.out / "metrics.jsonl", "w")
    start = window = time.perf_counter()
    tokens, step, epoch = 0, 0, 0
    batches = data.iter_epoch(epoch)
    while step < args.steps:
        batch = next(batches, None)
        if batch is None:
            epoch += 1
            batches = data.iter_epoch(epoch)
            continue
        mask = (torch.arange(batch["input_ids"].shape[1])[None, :] < batch["valid_lengths"][:, None]).long()
        out = model(input_ids=batch["input_ids"], token_type_ids=batch["segment_ids"], attention_mask=mask,
                    labels=hf_labels(batch), next_sentence_label=batch["next_sentence_labels"])
        out.loss.backward()
        apply_gradients(model.parameters(), optimizer, scheduler, args.max_grad_norm)
        step += 1
        tokens += int(batch["valid_lengths"].sum())
        if step % args.log_interval == 0:
            now = time.perf_counter()
            log.write(json.dumps({"step": step, "loss": out.loss.item(), "lr": scheduler.get_last_lr()[0],
                                  "tokens_per_s": tokens / (now - window), "elapsed_s": now - start}) + "\n")
            log.flush()
            window, tokens = now, 0
        if args.max_minutes and time.perf_counter() - start > 60 * args.max_minutes:
            print(f"--max-minutes {args.max_minutes} reached at step {step}")
            break
    model.save_pretrained(args.out / "final")
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(args.out / "init" / name, args.out / "final" / name)
    print(f"transformers baseline: {step} steps in {time.perf_counter() - start:.0f}s -> {args.out / 'final'}")


if __name__ == "__main__":
    main()
