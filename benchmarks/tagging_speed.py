"""CoNLL-2003 training-step speed, bertkit vs transformers, interleaved so a busy machine slows both alike.

A training step (forward, token cross-entropy with -100 off the first pieces, backward, clip, AdamW
step) of bertkit's BertForTokenClassification and of transformers' (sdpa attention), alternating
batch by batch. `--batching recipe` (default) gives each the batches of its own run in
docs/results.md: bertkit's windows as `bertkit finetune` draws them (random batches since issue 18;
`--bucket-batches 50` for the length-sorted groups it used before), transformers' shuffled
batches padded to their longest row (benchmarks/tagging_hf_baseline.py); both cover the same
sentences, batch i of each being the i-th of an epoch. `--batching same` gives both bertkit's
batches (the models alone). Prints the median seconds per batch, the total, and the ratio.

    python benchmarks/tagging_speed.py --data-dir ../shared/data/conll2003 --batches 60 --threads 1
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
from bertkit.tagging.conll import load_tagging_data
from bertkit.tagging.features import TaggedWindows
from bertkit.batches import random_batches
from bertkit.train.finetune import FinetuneConfig
from bertkit.train.optim import param_groups


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", required=True)
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--threads", type=int)
    p.add_argument("--batching", choices=("recipe", "same"), default="recipe")
    p.add_argument("--bucket-batches", type=int, default=FinetuneConfig().bucket_batches,
                   help="bertkit's batches: groups of N sorted by length (default: bertkit finetune's, 1 = random)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import BertForTokenClassification

    data = load_tagging_data("conll2003", args.data_dir)
    index = {label: i for i, label in enumerate(data.labels)}
    torch.manual_seed(0)
    ours = bertkit.load(args.model, head="token_classification", num_labels=len(data.labels))
    hf = BertForTokenClassification.from_pretrained(resolve(args.model), num_labels=len(data.labels), attn_implementation="sdpa")
    hf.classifier.load_state_dict(ours.classifier.state_dict())
    train = TaggedWindows(ours.tokenizer, [s.words for s in data.train], [[index[t] for t in s.tags] for s in data.train], args.max_len)
    rng = np.random.default_rng(0)
    ours_batches = random_batches(train.lengths, args.batch_size, rng, args.bucket_batches)[: args.batches + 1]
    if args.batching == "same":
        hf_batches = ours_batches
    else:
        order = rng.permutation(len(train))
        hf_batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)][: args.batches + 1]
    models = {"bertkit": ours.train(), "transformers": hf.train()}
    opts = {k: torch.optim.AdamW(param_groups(m, 0.01), lr=1e-5, eps=1e-6) for k, m in models.items()}
    seconds = {k: [] for k in models}
    shapes = {k: [0, 0] for k in models}  # real tokens, padded tokens
    for i in range(len(ours_batches)):
        for name, model in models.items():
            ids, segs, lens, y = train.batch(ours_batches[i] if name == "bertkit" else hf_batches[i])
            t0 = time.perf_counter()
            if name == "bertkit":
                logits = model(ids, segs, lens)
            else:
                mask = (torch.arange(ids.shape[1])[None, :] < lens[:, None]).long()
                logits = model(input_ids=ids, token_type_ids=segs, attention_mask=mask).logits
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            if i > 0:  # batch 0 warms both up
                seconds[name].append(time.perf_counter() - t0)
                shapes[name][0] += int(lens.sum())
                shapes[name][1] += ids.numel()
    total = {k: sum(v) for k, v in seconds.items()}
    result = {
        "batching": args.batching, "batches": args.batches, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "real_tokens": {k: v[0] for k, v in shapes.items()}, "padded_tokens": {k: v[1] for k, v in shapes.items()},
        "median_seconds_per_batch": {k: round(float(np.median(v)), 4) for k, v in seconds.items()},
        "seconds": {k: round(v, 2) for k, v in total.items()},
        "speedup_total": round(total["transformers"] / total["bertkit"], 3),
        "speedup_median": round(float(np.median(seconds["transformers"]) / np.median(seconds["bertkit"])), 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
