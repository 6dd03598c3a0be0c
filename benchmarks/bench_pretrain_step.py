"""One pretraining step (forward, MLM + NSP loss, backward, AdamW step): bertkit vs transformers.

Both models start from the same weights (made by bertkit, saved, loaded by
`transformers.BertForPreTraining` with SDPA attention) and take the same batches from real shards
(WikiText-2 valid through `bertkit pretrain-data`, sequence length 128). transformers runs its
standard head, which scores every position; bertkit scores only the masked ones and keeps the
encoder unpadded. Steps alternate between the two; the figure is the median over steps.

    python benchmarks/bench_pretrain_step.py                     # both default settings
    python benchmarks/bench_pretrain_step.py --config bert_4_512_8 --batch-size 32 --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import bertkit
from bertkit.config import BertConfig
from bertkit.data.shards import list_shards, read_shard
from bertkit.model import BertForPreTraining

ROOT = Path(__file__).resolve().parents[1]
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens"


def make_shards(out: Path, vocab_dir: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "bertkit", "pretrain-data", "--input", str(WIKITEXT), "--vocab", str(vocab_dir / "vocab.txt"),
         "--out", str(out), "--max-seq-length", "128", "--max-predictions-per-seq", "20", "--dupe-factor", "1",
         "--format", "wikitext"],
        check=True, stdout=subprocess.DEVNULL,
    )
    return out


def batches(shard_dir: Path, batch_size: int, count: int):
    arrays = read_shard(list_shards(shard_dir)[0])
    out = []
    for i in range(count):
        rows = slice(i * batch_size, (i + 1) * batch_size)
        b = {k: torch.from_numpy(v[rows]).long() if v.dtype != "float32" else torch.from_numpy(v[rows]) for k, v in arrays.items()}
        width = int(b["valid_lengths"].max())
        b["input_ids"], b["segment_ids"] = b["input_ids"][:, :width], b["segment_ids"][:, :width]
        # transformers' labels: the original id at masked positions, -100 elsewhere
        labels = torch.full_like(b["input_ids"], -100)
        w = b["masked_lm_weights"] > 0
        rows_idx = torch.arange(batch_size)[:, None].expand_as(w)
        labels[rows_idx[w], b["masked_lm_positions"][w]] = b["masked_lm_ids"][w]
        b["labels"] = labels
        b["attention_mask"] = (torch.arange(width)[None, :] < b["valid_lengths"][:, None]).long()
        out.append(b)
    return out


def bertkit_step(model, opt, b):
    mlm, nsp = model(b["input_ids"], b["segment_ids"], b["valid_lengths"],
                     masked_positions=b["masked_lm_positions"], masked_weights=b["masked_lm_weights"])
    w = b["masked_lm_weights"]
    loss = F.cross_entropy(mlm, b["masked_lm_ids"][w > 0]) + F.cross_entropy(nsp, b["next_sentence_labels"])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def hf_step(model, opt, b):
    out = model(input_ids=b["input_ids"], token_type_ids=b["segment_ids"], attention_mask=b["attention_mask"],
                labels=b["labels"], next_sentence_label=b["next_sentence_labels"])
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench(config: str, batch_size: int, steps: int, shard_dir: Path, vocab_size: int, tmp: Path):
    from transformers import BertForPreTraining as HFBertForPreTraining

    torch.manual_seed(0)
    cfg = BertConfig.from_preset(config, vocab_size=vocab_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ours = BertForPreTraining(cfg).train()
    bertkit.save(ours, tmp / config)
    theirs = HFBertForPreTraining.from_pretrained(tmp / config, attn_implementation="sdpa").train()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5, fused=True)  # fused: transformers Trainer's default too
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-5, fused=True)
    data = batches(shard_dir, batch_size, steps + 1)
    bertkit_step(ours, opt_ours, data[0])  # warm-up: first-call allocations
    hf_step(theirs, opt_theirs, data[0])
    t_ours, t_theirs, tokens = [], [], []
    for b in data[1:]:
        t = time.perf_counter()
        bertkit_step(ours, opt_ours, b)
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        hf_step(theirs, opt_theirs, b)
        t_theirs.append(time.perf_counter() - t)
        tokens.append(int(b["valid_lengths"].sum()))
    tok = statistics.median(tokens)
    ours_tps, theirs_tps = tok / statistics.median(t_ours), tok / statistics.median(t_theirs)
    print(f"{config:<16} batch {batch_size:>3}  bertkit {ours_tps:9,.0f} tok/s   transformers {theirs_tps:9,.0f} tok/s   "
          f"ratio {ours_tps / theirs_tps:.2f}x   ({steps} steps each, medians)", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="one named shape (default: bert_4_512_8 batch 32 and bert_12_768_12 batch 8)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--shards", type=Path, help="existing shard directory (default: built from WikiText-2 valid)")
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    vocab_dir = bertkit.resolve("all-minilm-l6-v2")  # a real 30,522-token uncased vocabulary
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shard_dir = args.shards or make_shards(tmp / "shards", vocab_dir)
        settings = [(args.config, args.batch_size or 32)] if args.config else [("bert_4_512_8", 32), ("bert_12_768_12", 8)]
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, sequence length 128, real shards from {WIKITEXT.name}")
        for config, batch_size in settings:
            bench(config, batch_size, args.steps, shard_dir, 30522, tmp)


if __name__ == "__main__":
    main()
