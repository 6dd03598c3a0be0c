"""--max-tokens against fixed-row batches: training tokens per second, the two interleaved.

Fine-tuning: SST-2 training sentences (real lengths, all-minilm-l6-v2 classifier), batches of
`--batch-size` random rows against random token-budget batches holding up to batch-size x the mean
length real tokens (`bertkit.batches.token_budget_batches`, as `finetune --max-tokens` draws them).
Pretraining: WikiText-2 valid through `bertkit pretrain-data` (sequence length 128, 10% short
sequences, as Google's recipe), `bert_4_256_4`, the loader's length-sorted batches of
`--pretrain-batch-size` rows against its `max_tokens` batches of the same mean token count.
Each step is a full training step (forward, loss, backward, clipping, AdamW); batches of the two
kinds alternate, so a busy machine slows both alike. Prints real tokens/s per kind (total real
tokens / total step time), the spread of tokens per step, and the ratio.

    python benchmarks/bench_max_tokens.py --threads 2 --steps 40
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def step_time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def compare(name: str, kinds: dict, step, steps: int) -> None:
    """kinds: label -> list of (batch, real tokens); step(batch) runs one training step."""
    seconds = {k: [] for k in kinds}
    tokens = {k: [] for k in kinds}
    for label, batches in kinds.items():  # warm-up
        step(batches[0][0])
    for i in range(1, steps + 1):
        for label, batches in kinds.items():
            batch, n = batches[i % len(batches)]
            seconds[label].append(step_time(lambda: step(batch)))
            tokens[label].append(n)
    base = None
    for label in kinds:
        rate = sum(tokens[label]) / sum(seconds[label])
        base = base or rate
        spread = statistics.pstdev(tokens[label]) / statistics.mean(tokens[label])
        print(f"| {name} | {label} | {statistics.mean(tokens[label]):.0f} | {100 * spread:.0f}% | {rate:,.0f} | {rate / base:.2f} |",
              flush=True)


def finetune_case(args) -> None:
    import bertkit
    from bertkit.batches import random_batches, token_budget_batches
    from bertkit.tasks.readers import get_task, load_task_data
    from bertkit.train.finetune import Encoded
    from bertkit.train.optim import build_optimizer

    task = get_task("sst-2")
    data = load_task_data(task, DATA / "glue_data")
    torch.manual_seed(0)
    model = bertkit.load(args.model, head="classification", num_labels=2).train()
    examples = data.train[: args.examples]
    enc = Encoded(model.tokenizer, examples, task, data.labels, 128)
    rng = np.random.default_rng(0)
    budget = int(args.batch_size * enc.lengths.mean())
    kinds = {f"{args.batch_size} rows": random_batches(enc.lengths, args.batch_size, rng),
             f"--max-tokens {budget}": token_budget_batches(enc.lengths, budget, rng)}
    kinds = {k: [(enc.batch(rows), int(enc.lengths[rows].sum())) for rows in v[: args.steps + 1]] for k, v in kinds.items()}
    opt = build_optimizer(model, "adamw", 1e-5, 0.01)

    def step(batch):
        ids, segs, lens, y = batch
        F.cross_entropy(model(ids, segs, lens), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    compare("fine-tuning, SST-2, MiniLM", kinds, step, args.steps)


def pretrain_case(args) -> None:
    import bertkit
    from bertkit.config import BertConfig
    from bertkit.data.loader import PretrainingLoader
    from bertkit.model import BertForPreTraining
    from bertkit.train.optim import build_optimizer
    from bertkit.train.pretrain import mlm_nsp_sums

    shards = Path(tempfile.mkdtemp()) / "shards"
    vocab = bertkit.resolve(args.model) / "vocab.txt"
    subprocess.run([sys.executable, "-m", "bertkit", "pretrain-data", "--input", str(DATA / "wikitext-2" / "wiki.valid.tokens"),
                    "--vocab", str(vocab), "--out", str(shards), "--max-seq-length", "128", "--dupe-factor", "1",
                    "--format", "wikitext", "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    rows = PretrainingLoader(shards, args.pretrain_batch_size, seed=0, drop_last=True)
    mean_len = float(np.mean([float(b["valid_lengths"].float().mean()) for _, b in zip(range(20), rows.iter_epoch(0))]))
    budget = int(args.pretrain_batch_size * mean_len)
    tokens = PretrainingLoader(shards, args.pretrain_batch_size, seed=0, drop_last=True, max_tokens=budget)
    kinds = {f"{args.pretrain_batch_size} rows": rows, f"--max-tokens {budget}": tokens}
    kinds = {k: [(b, int(b["valid_lengths"].sum())) for _, b in zip(range(args.steps + 1), v.iter_epoch(0))]
             for k, v in kinds.items()}
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.from_preset("bert_4_256_4", vocab_size=rows.vocab_size)).train()
    opt = build_optimizer(model, "adamw", 1e-4, 0.01)

    def step(batch):
        s = mlm_nsp_sums(model, batch)
        (s["mlm_loss"] / batch["masked_lm_weights"].sum() + s["nsp_loss"] / len(batch["valid_lengths"])).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    compare("pretraining, WikiText-2, bert_4_256_4", kinds, step, args.steps)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pretrain-batch-size", type=int, default=64)
    p.add_argument("--examples", type=int, default=20000)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print("\n| job | batches | mean real tokens / step | spread (std / mean) | real tokens/s | vs fixed rows |")
    print("|---|---|---:|---:|---:|---:|")
    finetune_case(args)
    pretrain_case(args)


if __name__ == "__main__":
    main()
