"""Encoder inference speed: bertkit's BertModel against transformers' BertModel, same weights, same batches.

Both models run in eval mode under `torch.inference_mode()`, fp32, on the same padded batches of real
variable-length sentences (SST-2 dev in file order, batch 32 by default; no sorting across batches for
either contender, so both see exactly the same padding). transformers uses its default attention
(SDPA) and gets the batch's attention mask; bertkit gets the batch's valid lengths. The contenders are
interleaved pass by pass (alternating which goes first), and each one's median pass time gives its
throughput in real (non-padding) tokens per second.

    python benchmarks/bench_encoder.py                              # all-minilm-l6-v2
    python benchmarks/bench_encoder.py --config bert_12_768_12      # random BERT-base weights
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import bertkit

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue_data" / "SST-2" / "dev.tsv"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default="all-minilm-l6-v2", help="checkpoint directory or name (default all-minilm-l6-v2)")
    src.add_argument("--config", help="a named shape (e.g. bert_12_768_12): random weights saved by bertkit, loaded by both")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a TSV whose first column is a sentence, with a header (default SST-2 dev)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=512, help="truncate longer sentences (SST-2 dev has none this long)")
    p.add_argument("--passes", type=int, default=5, help="timed passes over all batches per contender (default 5)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N sentences")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    return p.parse_args(argv)


def read_sentences(path: Path, limit: int | None) -> list[str]:
    if not path.is_file():
        sys.exit(f"bench_encoder: data file not found: {path} (pass --data)")
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    sentences = [r[0] for r in rows[1:] if r]
    return sentences[:limit] if limit else sentences


def build_models(args, workdir: Path):
    """(bertkit model, transformers model, description), the same weights in both."""
    from transformers import BertModel as HFBertModel

    if args.config:
        vocab_from = bertkit.load("all-minilm-l6-v2")  # any real vocabulary; the weights are random
        cfg = bertkit.BertConfig.from_preset(args.config, vocab_size=vocab_from.tokenizer.vocab_size)
        torch.manual_seed(0)
        directory = bertkit.save(bertkit.BertModel(cfg), workdir / args.config, tokenizer=vocab_from.tokenizer)
        what = f"{args.config} (random weights saved by bertkit, loaded by both)"
    else:
        directory = bertkit.resolve(args.model)
        what = f"{args.model} ({directory})"
    ours = bertkit.load(directory).eval()
    theirs = HFBertModel.from_pretrained(directory, attn_implementation="sdpa").eval()
    assert ours.load_report["missing"] == [] and ours.load_report["unexpected"] == []
    return ours, theirs, what


def run_bertkit(model, batches):
    for b in batches:
        model(b.input_ids, b.segment_ids, b.valid_lengths)


def run_transformers(model, batches):
    for b in batches:
        model(input_ids=b.input_ids, token_type_ids=b.segment_ids, attention_mask=b.hf_mask)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    sentences = read_sentences(args.data, args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs, what = build_models(args, Path(tmp))
    tok = ours.tokenizer
    batches = []
    for i in range(0, len(sentences), args.batch_size):  # file order: the same padded batches for both
        b = tok(sentences[i : i + args.batch_size], max_len=args.max_len)
        b.hf_mask = b.attention_mask.long()
        batches.append(b)
    real = sum(int(b.valid_lengths.sum()) for b in batches)
    padded = sum(b.input_ids.numel() for b in batches)

    print(f"model        {what}")
    print(f"data         {args.data}: {len(sentences)} sentences, {len(batches)} batches of {args.batch_size} in file order")
    print(f"tokens       {real} real, {padded} with padding ({100 * (1 - real / padded):.0f}% padding)")
    print(f"versions     torch {torch.__version__}, transformers {transformers.__version__} "
          f"(attention: {theirs.config._attn_implementation}), bertkit {bertkit.__version__}")
    print(f"machine      {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
          f"python {platform.python_version()}")

    contenders = {"bertkit": (run_bertkit, ours), "transformers": (run_transformers, theirs)}
    with torch.inference_mode():
        # The two really compute the same thing (max abs difference at real tokens, fp32).
        worst = 0.0
        for b in batches[:4]:
            a, _ = ours(b.input_ids, b.segment_ids, b.valid_lengths)
            r = theirs(input_ids=b.input_ids, token_type_ids=b.segment_ids, attention_mask=b.hf_mask).last_hidden_state
            worst = max(worst, float((a - r)[b.attention_mask].abs().max()))
        print(f"parity       max |bertkit - transformers| at real tokens: {worst:.2e}")
        for fn, model in contenders.values():  # warm-up pass each
            fn(model, batches)
        times = {name: [] for name in contenders}
        for p in range(args.passes):
            order = list(contenders) if p % 2 == 0 else list(reversed(contenders))
            for name in order:
                fn, model = contenders[name]
                start = time.perf_counter()
                fn(model, batches)
                times[name].append(time.perf_counter() - start)

    print(f"\n{'':<14}{'median s/pass':>14}{'real tokens/s':>15}   passes (s)")
    rate = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rate[name] = real / med
        print(f"{name:<14}{med:>14.3f}{rate[name]:>15,.0f}   {' '.join(f'{t:.3f}' for t in ts)}")
    print(f"\nratio        bertkit / transformers = {rate['bertkit'] / rate['transformers']:.2f}x real tokens/s")


if __name__ == "__main__":
    main()
