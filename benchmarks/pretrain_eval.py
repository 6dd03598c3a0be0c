"""Evaluate pretraining checkpoints (bertkit's or transformers') on held-out shards, one code path.

    python benchmarks/pretrain_eval.py --eval-data shards-test runs/bertkit/final runs/hf/final

Prints MLM accuracy (over the real masked positions), MLM perplexity and NSP accuracy per model.
A transformers checkpoint is read by bertkit's loader (the two agree to 1e-4; see tests/test_model.py).
"""

from __future__ import annotations

import argparse
import json

import torch

import bertkit
from bertkit.data.loader import PretrainingLoader
from bertkit.train.pretrain import evaluate


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--eval-data", required=True)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    data = PretrainingLoader(args.eval_data, args.batch_size, shuffle=False)
    for path in args.models:
        model = bertkit.load(path, head="pretraining")
        with torch.inference_mode():
            scores = evaluate(model, data)
        print(json.dumps({"model": path, **{k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}}))


if __name__ == "__main__":
    main()
