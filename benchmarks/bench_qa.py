"""QA speed against transformers on the same SQuAD windows: prediction and one training step, interleaved.

    python benchmarks/bench_qa.py --eval runs/squad/data/squad1.1-eval.json --train runs/squad/data/squad1.1-train.json --threads 2

Both models compute the same function (the same weights and QA head; the logit difference is
printed). Every contender of a round sees the same windows; the order of contenders alternates
every round so that load on a shared machine hits all of them; medians over rounds are printed
with the per-round figures.

Prediction, windows per second over a fixed, seeded sample of the evaluation windows:
  bertkit                       as `bertkit squad` predicts: sorted by length, --eval-batch-size per
                                batch, padding skipped inside the model
  transformers, same batches    transformers on exactly bertkit's (sorted) batches: model against model
  bertkit, file order           bertkit on the windows in file order (unsorted batches)
  transformers, file order      as `run_qa.py --pad_to_max_length False` predicts: file order, each
                                batch padded to its longest window (the same tensors as the row above)
  transformers, pad 384         as `run_qa.py` predicts by default: file order, padded to 384
Training, seconds per optimizer step (forward, span loss, backward, clipping, fused AdamW) on
--batch-size windows, a new batch each round:
  bucketed                      batches as bertkit's loop draws them (similar lengths), both models
  shuffled                      batches as a plain shuffled DataLoader draws them, padded to the
                                longest window, both models on the same tensors
  transformers, pad 384         the shuffled batch padded to 384, as `run_qa.py` trains by default
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from squad_hf_baseline import HFSpanModel  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--eval", required=True, help="SQuAD file whose windows are predicted")
    p.add_argument("--train", required=True, help="SQuAD file whose windows are trained on")
    p.add_argument("--sample", type=int, default=256, help="evaluation windows per prediction round")
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-seq-length", type=int, default=384)
    p.add_argument("--json", metavar="F", help="also write the figures here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from bertkit.cpu.allocator import keep_freed_memory

    keep_freed_memory()  # as the `bertkit` command does; one process, so both models get it

    from transformers import BertForQuestionAnswering

    import bertkit
    from bertkit.qa.features import make_features
    from bertkit.qa.squad_data import read_squad
    from bertkit.train.squad import span_loss
    from bertkit.batches import random_batches, sorted_batches
    from bertkit.train.optim import apply_gradients, build_optimizer, linear_warmup_decay

    directory = bertkit.resolve(args.model)
    ours = bertkit.load(directory, head="question_answering")
    tokenizer = ours.tokenizer
    theirs = HFSpanModel(BertForQuestionAnswering.from_pretrained(directory))
    with torch.no_grad():  # the same QA head on both, so both compute the same function
        theirs.hf.qa_outputs.weight.copy_(ours.qa_outputs.weight)
        theirs.hf.qa_outputs.bias.copy_(ours.qa_outputs.bias)
    models = {"bertkit": ours, "transformers": theirs}

    rng = np.random.default_rng(0)
    eval_features = make_features(read_squad(args.eval).examples, tokenizer, max_seq_length=args.max_seq_length)
    sample = np.sort(rng.choice(len(eval_features), size=min(args.sample, len(eval_features)), replace=False))
    sorted_rows = [sample[b] for b in sorted_batches(eval_features.lengths[sample], args.eval_batch_size)]
    file_rows = [sample[i:i + args.eval_batch_size] for i in range(0, len(sample), args.eval_batch_size)]
    train_features = make_features(read_squad(args.train, training=True).examples, tokenizer,
                                   max_seq_length=args.max_seq_length, training=True)
    bucketed = random_batches(train_features.lengths, args.batch_size, rng, bucket=50)[: args.rounds + 1]
    shuffled = np.array_split(rng.permutation(len(train_features))[: args.batch_size * (args.rounds + 1)], args.rounds + 1)

    # Same outputs first: a speed comparison of two different functions would mean nothing.
    with torch.no_grad():
        ids, segs, lens = eval_features.batch(file_rows[0])
        a, b = ours.eval()(ids, segs, lens), theirs.eval()(ids, segs, lens)
        mask = torch.arange(ids.shape[1])[None, :] < lens[:, None]
        diff = max(float((x - y)[mask].abs().max()) for x, y in zip(a, b))
    print(f"max |start/end logit difference| on real tokens: {diff:.2e}", flush=True)

    def batch(features, rows, pad_to=None):
        ids, segs, lens = features.batch(rows)
        if pad_to:
            ids = torch.nn.functional.pad(ids, (0, pad_to - ids.shape[1]), value=tokenizer.pad_id)
            segs = torch.nn.functional.pad(segs, (0, pad_to - segs.shape[1]))
        return ids, segs, lens

    L = args.max_seq_length
    predict_contenders = {  # name: (model, batches, pad to)
        "bertkit": (ours, sorted_rows, None),
        "transformers, same batches": (theirs, sorted_rows, None),
        "bertkit, file order": (ours, file_rows, None),
        "transformers, file order": (theirs, file_rows, None),
        "transformers, pad 384": (theirs, file_rows, L),
    }

    def predict_round(name):
        model, batches, pad_to = predict_contenders[name]
        model.eval()
        t = time.perf_counter()
        with torch.no_grad():
            for rows in batches:
                model(*batch(eval_features, rows, pad_to))
        return len(sample) / (time.perf_counter() - t)

    train_contenders = {  # name: (model, batches, pad to)
        "bertkit, bucketed": ("bertkit", bucketed, None),
        "transformers, bucketed": ("transformers", bucketed, None),
        "bertkit, shuffled": ("bertkit", shuffled, None),
        "transformers, shuffled": ("transformers", shuffled, None),
        "transformers, pad 384": ("transformers", shuffled, L),
    }
    optimizers = {}
    for name, model in models.items():
        opt = build_optimizer(model, "adamw", 1e-5, 0.01)
        optimizers[name] = (opt, linear_warmup_decay(opt, 0, 10**6))

    def train_step(name, r):
        model_name, batches, pad_to = train_contenders[name]
        model, (opt, sched) = models[model_name], optimizers[model_name]
        model.train()
        rows = batches[r]
        ids, segs, lens = batch(train_features, rows, pad_to)
        starts = torch.from_numpy(train_features.start_positions[rows])
        ends = torch.from_numpy(train_features.end_positions[rows])
        t = time.perf_counter()
        loss = span_loss(*model(ids, segs, lens), lens, starts, ends)
        loss.backward()
        apply_gradients(model.parameters(), opt, sched, 1.0)
        return time.perf_counter() - t

    for name in predict_contenders:  # warm-up: first-call allocations
        predict_round(name)
    for name in train_contenders:
        train_step(name, 0)

    predict = {n: [] for n in predict_contenders}
    step = {n: [] for n in train_contenders}
    for r in range(args.rounds):
        for name in (list(predict) if r % 2 == 0 else list(predict)[::-1]):
            predict[name].append(predict_round(name))
        for name in (list(step) if r % 2 == 0 else list(step)[::-1]):
            step[name].append(train_step(name, r + 1))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.1f}/s" for n, v in predict.items()), flush=True)
        print(f"         " + ", ".join(f"{n} {v[-1]:.2f}s" for n, v in step.items()), flush=True)

    med_p = {n: statistics.median(v) for n, v in predict.items()}
    med_s = {n: statistics.median(v) for n, v in step.items()}
    predict_pairs = [("bertkit", "transformers, same batches"), ("bertkit", "transformers, file order"),
                     ("bertkit", "transformers, pad 384"), ("bertkit, file order", "transformers, file order")]
    train_pairs = [("bertkit, bucketed", "transformers, bucketed"), ("bertkit, shuffled", "transformers, shuffled"),
                   ("bertkit, bucketed", "transformers, pad 384"), ("bertkit, shuffled", "transformers, pad 384")]
    result = {
        "threads": args.threads, "eval_windows_per_round": len(sample), "eval_batch_size": args.eval_batch_size,
        "train_batch_size": args.batch_size, "rounds": args.rounds, "max_logit_diff": diff,
        "mean_eval_window_tokens": float(eval_features.lengths[sample].mean()),
        "train_tokens_per_batch": {"bucketed": [int(train_features.lengths[b].sum()) for b in bucketed[1:]],
                                   "shuffled": [int(train_features.lengths[b].sum()) for b in shuffled[1:]]},
        "predict_windows_per_s_median": med_p, "train_step_seconds_median": med_s,
        "predict_speedup": {f"{a} vs {b}": med_p[a] / med_p[b] for a, b in predict_pairs},
        "train_speedup": {f"{a} vs {b}": med_s[b] / med_s[a] for a, b in train_pairs},
        "per_round": {"predict": predict, "step": step},
    }
    print(f"\nprediction, windows/s (median of {args.rounds}): " + ", ".join(f"{n} {v:.1f}" for n, v in med_p.items()))
    for k, v in result["predict_speedup"].items():
        print(f"  {k}: {v:.2f}x")
    print(f"training step, batch {args.batch_size}, s (median of {args.rounds}): " + ", ".join(f"{n} {v:.2f}" for n, v in med_s.items()))
    for k, v in result["train_speedup"].items():
        print(f"  {k}: {v:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
