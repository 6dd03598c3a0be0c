"""bf16 against fp32 on this CPU: training-step and inference speed, the two interleaved.

For each model shape (MiniLM = all-minilm-l6-v2's 6 x 384, and bert_12_768_12 = BERT-base, random
weights) and each precision, the same batches of SST-2-like lengths (random token ids; lengths drawn
from 8..`--max-len`) go through:
- a training step: forward of BertForSequenceClassification under `bertkit.device.autocast`,
  cross-entropy, backward, clipping, fused AdamW step (the one loop's step; fp32 master weights);
- inference: a forward pass of batch `--batch-size` and of one sentence (batch 1), no gradients.
The precisions alternate call by call (fp32, bf16, fp32, ...), so a busy shared machine slows both
alike; each figure is the median of `--rounds`. Prints a markdown table with the bf16 / fp32 time
ratio (below 1: bf16 is faster). bf16 needs AVX512_BF16 or AMX (`bertkit.device.native_bf16_cpu`).

    python benchmarks/bench_precision.py --threads 2 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bertkit.config import BertConfig
from bertkit.device import autocast, cpu_flags, native_bf16_cpu
from bertkit.model import BertForSequenceClassification
from bertkit.train.optim import build_optimizer

CPU = torch.device("cpu")


def shapes() -> dict[str, BertConfig]:
    return {"MiniLM (6 x 384)": BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                           intermediate_size=1536),
            "bert_12_768_12": BertConfig.from_preset("bert_12_768_12")}


def make_batch(batch: int, max_len: int, gen: torch.Generator):
    lengths = torch.randint(8, max_len + 1, (batch,), generator=gen)
    ids = torch.randint(1000, 30000, (batch, int(lengths.max())), generator=gen)
    return ids, torch.zeros_like(ids), lengths, torch.randint(0, 2, (batch,), generator=gen)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int)
    p.add_argument("--shapes", nargs="+", choices=["MiniLM", "bert_12_768_12"], default=["MiniLM", "bert_12_768_12"])
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not native_bf16_cpu():
        raise SystemExit("this CPU has no native bf16 (AVX512_BF16 / AMX): bertkit refuses --precision bf16 here")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), bf16 flags: "
          f"{sorted(f for f in cpu_flags() if 'bf16' in f or f.startswith('amx'))}")
    print("\n| shape | measurement | fp32 median s | bf16 median s | bf16 / fp32 |\n|---|---|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    for name, cfg in shapes().items():
        if not any(name.startswith(s) for s in args.shapes):
            continue
        torch.manual_seed(0)
        model = BertForSequenceClassification(cfg, num_labels=2)
        optimizer = build_optimizer(model, "adamw", 1e-5, 0.01)
        batches = [make_batch(args.batch_size, args.max_len, gen) for _ in range(args.rounds + 1)]
        one = [make_batch(1, args.max_len, gen) for _ in range(args.rounds + 1)]

        def train_step(batch, precision):
            model.train()
            ids, segs, lens, y = batch
            with autocast(CPU, precision):
                loss = F.cross_entropy(model(ids, segs, lens).float(), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        @torch.no_grad()
        def infer(batch, precision):
            model.eval()
            ids, segs, lens, _ = batch
            with autocast(CPU, precision):
                model(ids, segs, lens)

        for label, fn, data in ((f"training step, batch {args.batch_size}", train_step, batches),
                                (f"inference, batch {args.batch_size}", infer, batches),
                                ("inference, batch 1", infer, one)):
            times = {"fp32": [], "bf16": []}
            for precision in ("fp32", "bf16"):  # warm-up: weight caches, oneDNN primitives
                fn(data[0], precision)
            for batch in data[1:]:
                for precision in ("fp32", "bf16"):
                    times[precision].append(timed(lambda: fn(batch, precision)))
            a, b = statistics.median(times["fp32"]), statistics.median(times["bf16"])
            print(f"| {name} | {label} | {a:.4f} | {b:.4f} | {b / a:.2f} |", flush=True)


if __name__ == "__main__":
    main()
