"""CPU inference options of bertkit's model, each alone: plain ops, fused layers, MKL-packed weights,
the native encoder, and a classifier's [CLS]-only last layer.

    python benchmarks/cpu_inference_options.py --inputs squad --threads 1
    python benchmarks/cpu_inference_options.py --inputs sentences --threads 2
    python benchmarks/cpu_inference_options.py --inputs classifier --threads 2 --rounds 7

  plain         every Linear through addmm, GELU and residual adds as separate ops
                (optimize_for_cpu(packed_rows=0, fuse=False, native=False))
  fused         bertkit's default: oneDNN Linear with bias, GELU or residual add in the GEMM
                (bertkit/cpu/onednn.py)
  packed        MKL-packed weights for inputs of up to 256 rows (bertkit/cpu/packed_linear.py), no
                fusion (optimize_for_cpu(fuse=False, native=False))
  fused+packed  both: packed up to 256 rows, fused above (optimize_for_cpu(native=False))
  +native       fused+packed with the compiled encoder kernels for unpadded inputs of up to 256
                tokens (bertkit/cpu/native/; optimize_for_cpu(model), what `bertkit serve`'s PyTorch
                backend runs where a C++ compiler is present)
Inputs: "squad", three batches of 64 windows of about 120, 213 and 300 tokens (seeded random ids,
the shapes of SQuAD prediction); "sentences", the first 150 SST-2 dev sentences one at a time;
"classifier", all of SST-2 dev in length-sorted batches of 32 through a sequence classifier (the
all-minilm-l6-v2 encoder and a new 2-label head: the weights do not change the time), default
(the last layer's per-token work for [CLS] only, `BertModel.pooled_output`) against "full last
layer" (the classifier on `BertModel.forward`'s pooled output).
Interleaved rounds (the order reverses every round), medians; the same all-minilm-l6-v2 weights.
"""

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

import bertkit
from bertkit.cpu import optimize_for_cpu

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encoder import DEFAULT_DATA, read_sentences  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--inputs", choices=("squad", "sentences", "classifier"), default="squad")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--keep-freed-memory", action="store_true", help="apply bertkit.cpu.allocator first, as the bertkit command does")
    args = p.parse_args()
    if args.keep_freed_memory:
        from bertkit.cpu.allocator import keep_freed_memory

        keep_freed_memory()
    torch.set_num_threads(args.threads)
    if args.inputs == "classifier":
        variants, inputs = classifier_variants()
    else:
        variants, inputs = encoder_variants(args.inputs)

    def run(name):
        call = variants[name]
        t = time.perf_counter()
        with torch.inference_mode():
            for x in inputs:
                call(*x)
        return time.perf_counter() - t

    for name in variants:  # warm-up (and the weight re-layouts)
        run(name)
    times = {n: [] for n in variants}
    for r in range(args.rounds):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            times[name].append(run(name))
    first = next(iter(variants))  # the baseline of the ratios
    baseline = statistics.median(times[first])
    print(f"{args.inputs}, {args.threads} thread(s), median of {args.rounds} rounds, "
          f"{'freed memory kept' if args.keep_freed_memory else 'default malloc'}:")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<16} {med:7.3f} s   {baseline / med:5.2f}x {first}   ({' '.join(f'{t:.3f}' for t in ts)})")


def encoder_variants(kind):
    """name -> callable over a QA model, each its own copy of the same weights, and the inputs."""
    model = bertkit.load(bertkit.resolve("all-minilm-l6-v2"), head="question_answering").eval()
    variant = lambda **knobs: optimize_for_cpu(copy.deepcopy(model), **knobs)  # noqa: E731
    plain = variant(packed_rows=0, fuse=False, native=False)
    packed = variant(fuse=False, native=False)
    fused_packed = variant(native=False)
    native = variant()
    if kind == "squad":
        g = torch.Generator().manual_seed(0)
        inputs = []
        for width in (120, 213, 300):
            ids = torch.randint(1000, 20000, (64, width), generator=g)
            lengths = torch.randint(width - 20, width + 1, (64,), generator=g)
            lengths[0] = width
            inputs.append((ids, torch.zeros_like(ids), lengths))
    else:
        encoded = (model.tokenizer([s], max_len=512) for s in read_sentences(DEFAULT_DATA, 150))
        inputs = [(b.input_ids, b.segment_ids, b.valid_lengths) for b in encoded]
    return {"plain": plain, "fused": model, "packed": packed, "fused+packed": fused_packed, "+native": native}, inputs


def classifier_variants():
    encoder = bertkit.load(bertkit.resolve("all-minilm-l6-v2"))
    clf = bertkit.BertForSequenceClassification(encoder.config, num_labels=2).eval()
    clf.bert = encoder.eval()
    sentences = read_sentences(DEFAULT_DATA, None)
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    batches = (encoder.tokenizer([sentences[i] for i in order[j:j + 32]]) for j in range(0, len(order), 32))
    inputs = [(b.input_ids, b.segment_ids, b.valid_lengths) for b in batches]
    full = lambda *x: clf.classifier(clf.bert(*x)[1])  # noqa: E731
    return {"full last layer": full, "cls-only": clf}, inputs


if __name__ == "__main__":
    main()
