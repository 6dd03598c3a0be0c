"""The SQuAD reference run: transformers' BertForQuestionAnswering on bertkit's exact windows and loop.

    python benchmarks/squad_hf_baseline.py --model all-minilm-l6-v2 --train runs/squad/data/squad1.1-train.json \
        --predict runs/squad/data/squad1.1-eval.json --out runs/squad/v1.1-hf --threads 1 --epochs 1 --lr 1e-4

Everything but the model is bertkit's and shared with `bertkit squad`: the features (windows,
max-context flags, targets), the batch order (same seed; random batches as `bertkit squad` draws
them, or `--bucket-batches N` for length-sorted groups of N batches), the loss, fused AdamW, the schedule,
gradient clipping, post-processing and the metric. Only the network differs: transformers'
`BertForQuestionAnswering` (its default attention, padded batches) behind a three-line adapter.
So the F1 difference is seed noise plus numerics, and the time difference is the model's.
Writes OUT/eval_results.json (the official keys, times, peak memory) and OUT/predictions.json.
"""

import argparse
import json
import time
from pathlib import Path

import torch


class HFSpanModel(torch.nn.Module):
    """transformers' QA model with bertkit's call signature: (ids, segments, lengths) -> (start, end)."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf = hf_model

    def forward(self, input_ids, segment_ids, valid_lengths):
        mask = torch.arange(input_ids.shape[1])[None, :] < valid_lengths[:, None]
        out = self.hf(input_ids=input_ids, token_type_ids=segment_ids, attention_mask=mask.long())
        return out.start_logits, out.end_logits


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--train", required=True)
    p.add_argument("--predict", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--version-2", action="store_true")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--accumulate", type=int, default=1, help="batches per optimizer step (the same update, less memory)")
    p.add_argument("--max-seq-length", type=int, default=384)
    p.add_argument("--doc-stride", type=int, default=128)
    p.add_argument("--max-query-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bucket-batches", type=int, default=1, metavar="N", help="length-sorted groups of N batches (1: random)")
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    from bertkit.cpu.allocator import keep_freed_memory

    keep_freed_memory()  # the process setting `bertkit squad` runs with: only the network differs
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import BertForQuestionAnswering

    import bertkit
    from bertkit.qa.features import make_features
    from bertkit.qa.inference import window_logits
    from bertkit.qa.metric import evaluate
    from bertkit.qa.postprocess import answer_all
    from bertkit.qa.squad_data import read_squad
    from bertkit.device import peak_rss_mb
    from bertkit.train.squad import SquadConfig
    from bertkit.train.squad import train_spans
    from bertkit.tokenizer import BertTokenizer
    from bertkit.train.distributed import DistributedContext

    wall = time.perf_counter()
    directory = bertkit.resolve(args.model)
    tokenizer = BertTokenizer.from_dir(directory)
    torch.manual_seed(args.seed)
    model = HFSpanModel(BertForQuestionAnswering.from_pretrained(directory))
    options = dict(max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
                   max_query_length=args.max_query_length, version_2=args.version_2)
    train = read_squad(args.train, args.version_2, training=True)
    features = make_features(train.examples, tokenizer, training=True, **options)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = SquadConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         accumulate=args.accumulate, bucket_batches=args.bucket_batches, device="cpu")
    # bertkit's loop (metrics.jsonl included) on the transformers network; no resumable checkpoints,
    # which bertkit writes in its own checkpoint format
    epochs = train_spans(model, features, config, out, DistributedContext(), quiet=True, checkpoints=False).epochs
    data = read_squad(args.predict, args.version_2)
    eval_features = make_features(data.examples, tokenizer, **options)
    t0 = time.perf_counter()
    logits = window_logits(model, eval_features, 64)
    forward_seconds = time.perf_counter() - t0
    answers = answer_all(data.examples, eval_features, logits, version_2=args.version_2)
    predictions = {ex.qid: a.text for ex, a in zip(data.examples, answers)}
    (out / "predictions.json").write_text(json.dumps(predictions, ensure_ascii=False, indent=2))
    null_odds = {ex.qid: a.null_odds for ex, a in zip(data.examples, answers)} if args.version_2 else None
    if null_odds:
        (out / "null_odds.json").write_text(json.dumps(null_odds, indent=2))
    dataset = json.loads(Path(args.predict).read_text(encoding="utf-8"))["data"]
    results = evaluate(dataset, predictions, null_odds, na_prob_thresh=0.0 if args.version_2 else 1.0)
    results.update({"model": f"transformers BertForQuestionAnswering ({args.model})", "train_windows": len(features),
                    "epochs": epochs, "train_seconds_per_epoch": [e["train_seconds"] for e in epochs],
                    "predict_windows": len(eval_features), "predict_forward_seconds": round(forward_seconds, 2),
                    "wall_seconds": round(time.perf_counter() - wall, 2), "torch_threads": torch.get_num_threads(),
                    "peak_rss_mb": peak_rss_mb(), "hyperparameters": vars(args)})
    (out / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("exact", "f1", "total", "train_seconds_per_epoch", "wall_seconds")}))


if __name__ == "__main__":
    main()
