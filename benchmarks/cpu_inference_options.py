"""CPU inference options of bertkit's model, each alone: plain ops, fused layers, MKL-packed weights.

    python benchmarks/cpu_inference_options.py --inputs squad --threads 1
    python benchmarks/cpu_inference_options.py --inputs sentences --threads 2

  plain         every Linear through addmm, GELU and residual adds as separate ops
  fused         bertkit's default: oneDNN Linear with bias, GELU or residual add in the GEMM
                (bertkit/fused_linear.py)
  packed        MKL-packed weights for inputs of up to 256 rows (bertkit/packed_linear.py), no fusion
  fused+packed  both (what `bertkit serve`'s PyTorch backend runs): packed up to 256 rows, fused above
Inputs: "squad", three batches of 64 windows of about 120, 213 and 300 tokens (seeded random ids,
the shapes of SQuAD prediction); "sentences", the first 150 SST-2 dev sentences one at a time.
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
import bertkit.fused_linear
from bertkit.fused_linear import can_fuse
from bertkit.packed_linear import pack_linear_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encoder import DEFAULT_DATA, read_sentences  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--inputs", choices=("squad", "sentences"), default="squad")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--keep-freed-memory", action="store_true", help="apply bertkit.cpu_allocator first, as the bertkit command does")
    args = p.parse_args()
    if args.keep_freed_memory:
        from bertkit.cpu_allocator import keep_freed_memory

        keep_freed_memory()
    torch.set_num_threads(args.threads)
    model = bertkit.load(bertkit.resolve("all-minilm-l6-v2"), head="question_answering").eval()
    packed = pack_linear_weights(copy.deepcopy(model))
    if args.inputs == "squad":
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
    never = lambda *a, **k: False  # noqa: E731
    variants = {"plain": (model, never), "fused": (model, can_fuse), "packed": (packed, never),
                "fused+packed": (packed, can_fuse)}

    def run(name):
        m, fuse_rule = variants[name]
        bertkit.fused_linear.can_fuse = fuse_rule
        t = time.perf_counter()
        with torch.inference_mode():
            for x in inputs:
                m(*x)
        return time.perf_counter() - t

    for name in variants:  # warm-up (and the weight re-layouts)
        run(name)
    times = {n: [] for n in variants}
    for r in range(args.rounds):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            times[name].append(run(name))
    bertkit.fused_linear.can_fuse = can_fuse
    plain = statistics.median(times["plain"])
    print(f"{args.inputs}, {args.threads} thread(s), median of {args.rounds} rounds, "
          f"{'freed memory kept' if args.keep_freed_memory else 'default malloc'}:")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<13} {med:7.3f} s   {plain / med:5.2f}x plain   ({' '.join(f'{t:.3f}' for t in ts)})")


if __name__ == "__main__":
    main()
