"""QA speed against transformers on the same SQuAD windows: prediction and one training step, interleaved.

    python benchmarks/bench_qa.py --eval runs/squad/data/squad1.1-eval.json --train runs/squad/data/squad1.1-train.json --threads 1

Prediction: windows per second over a fixed sample of the SQuAD 1.1 evaluation windows (seeded),
batched as `bertkit squad` batches them (sorted by length, --eval-batch-size), the same batches for
both models. Training: seconds per optimizer step (forward, span loss, backward, fused AdamW step)
on the same --batch-size windows drawn as the training loop draws them. Each round times bertkit
then transformers (the order alternates every round) so that load on a shared machine hits both;
the medians over rounds and their ratio are printed, and the per-round figures with them.

A third contender, "transformers-pad384", is the same transformers model fed as transformers'
own `run_qa.py` feeds it by default (every window padded to --max-seq-length): what a user of that
script gets, shown for context; the model-against-model figure is "transformers" on identical batches.
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

    from transformers import BertForQuestionAnswering

    import bertkit
    from bertkit.qa.features import make_features
    from bertkit.qa.squad_data import read_squad
    from bertkit.qa.train import span_loss
    from bertkit.train.finetune import bucket_batches, sorted_batches
    from bertkit.train.optim import apply_gradients, build_optimizer, linear_warmup_decay

    directory = bertkit.resolve(args.model)
    ours = bertkit.load(directory, head="question_answering")
    tokenizer = ours.tokenizer
    theirs = HFSpanModel(BertForQuestionAnswering.from_pretrained(directory))
    with torch.no_grad():  # the same QA head on both, so both compute the same function
        theirs.hf.qa_outputs.weight.copy_(ours.qa_outputs.weight)
        theirs.hf.qa_outputs.bias.copy_(ours.qa_outputs.bias)
    models = {"bertkit": ours, "transformers": theirs, "transformers-pad384": theirs}
    pad_to = {"transformers-pad384": args.max_seq_length}

    rng = np.random.default_rng(0)
    eval_features = make_features(read_squad(args.eval).examples, tokenizer, max_seq_length=args.max_seq_length)
    sample = np.sort(rng.choice(len(eval_features), size=min(args.sample, len(eval_features)), replace=False))
    eval_batches = [sample[b] for b in sorted_batches(eval_features.lengths[sample], args.eval_batch_size)]
    train_features = make_features(read_squad(args.train, training=True).examples, tokenizer,
                                   max_seq_length=args.max_seq_length, training=True)
    train_batches = bucket_batches(train_features.lengths, args.batch_size, rng)[: args.rounds + 1]

    # Same outputs first: a speed comparison of two different functions would mean nothing.
    with torch.no_grad():
        ids, segs, lens = eval_features.batch(eval_batches[0])
        a, b = ours.eval()(ids, segs, lens), theirs.eval()(ids, segs, lens)
        mask = torch.arange(ids.shape[1])[None, :] < lens[:, None]
        diff = max(float((x - y)[mask].abs().max()) for x, y in zip(a, b))
    print(f"max |start/end logit difference| on real tokens: {diff:.2e}", flush=True)

    def batch(features, rows, name):
        ids, segs, lens = features.batch(rows)
        width = pad_to.get(name)
        if width:
            ids = torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=tokenizer.pad_id)
            segs = torch.nn.functional.pad(segs, (0, width - segs.shape[1]))
        return ids, segs, lens

    def predict_round(name):
        model = models[name]
        model.eval()
        t = time.perf_counter()
        with torch.no_grad():
            for rows in eval_batches:
                model(*batch(eval_features, rows, name))
        return len(sample) / (time.perf_counter() - t)

    optimizers = {}
    for name, model in models.items():
        opt = build_optimizer(model, "adamw", 1e-5, 0.01)
        optimizers[name] = (opt, linear_warmup_decay(opt, 0, 10**6))

    def train_step(name, rows):
        model = models[name]
        model.train()
        opt, sched = optimizers[name]
        ids, segs, lens = batch(train_features, rows, name)
        starts = torch.from_numpy(train_features.start_positions[rows])
        ends = torch.from_numpy(train_features.end_positions[rows])
        t = time.perf_counter()
        loss = span_loss(*model(ids, segs, lens), lens, starts, ends)
        loss.backward()
        apply_gradients(model.parameters(), opt, sched, 1.0)
        return time.perf_counter() - t

    # warm-up: one prediction batch and one training step each (first-call allocations)
    for name, model in models.items():
        with torch.no_grad():
            model.eval()(*batch(eval_features, eval_batches[-1], name))
        train_step(name, train_batches[0])

    predict = {n: [] for n in models}
    step = {n: [] for n in models}
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(models)[::-1]
        for name in order:
            predict[name].append(predict_round(name))
        for name in order:
            step[name].append(train_step(name, train_batches[r + 1]))
        print(f"round {r + 1}: " + ", ".join(f"{n} {predict[n][-1]:.1f} windows/s, step {step[n][-1]:.2f}s" for n in models),
              flush=True)

    med_p = {n: statistics.median(v) for n, v in predict.items()}
    med_s = {n: statistics.median(v) for n, v in step.items()}
    result = {
        "threads": args.threads, "eval_windows_per_round": len(sample), "eval_batch_size": args.eval_batch_size,
        "train_batch_size": args.batch_size, "rounds": args.rounds, "max_logit_diff": diff,
        "predict_windows_per_s_median": med_p, "train_step_seconds_median": med_s,
        "predict_speedup": {n: med_p["bertkit"] / v for n, v in med_p.items() if n != "bertkit"},
        "train_speedup": {n: v / med_s["bertkit"] for n, v in med_s.items() if n != "bertkit"},
        "mean_eval_window_tokens": float(eval_features.lengths[sample].mean()),
        "per_round": {"predict": predict, "step": step},
    }
    for other in ("transformers", "transformers-pad384"):
        print(f"prediction: bertkit {med_p['bertkit']:.1f} vs {other} {med_p[other]:.1f} windows/s "
              f"(median of {args.rounds}): {result['predict_speedup'][other]:.2f}x")
        print(f"training step (batch {args.batch_size}): bertkit {med_s['bertkit']:.2f}s vs {other} "
              f"{med_s[other]:.2f}s (median of {args.rounds}): {result['train_speedup'][other]:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
