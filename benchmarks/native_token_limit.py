"""Up to how many tokens the native encoder kernels beat the layer-by-layer path (optimize_for_cpu's
`max_tokens`): one input of each shape (unpadded, and padded batches with a quarter of the positions
padding), the layer path as optimize_for_cpu(native=False) sets it up for this CPU, interleaved calls,
medians. Inputs are random token ids (the cost depends on the shape only).

    python benchmarks/native_token_limit.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import bertkit
from bertkit.cpu import optimize_for_cpu

SHAPES = [(1, 64), (1, 128), (1, 256), (1, 512), (16, 32), (32, 32), (32, 64), (8, 512), (64, 128), (32, 512)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = bertkit.load(args.model).eval()
    layered = optimize_for_cpu(copy.deepcopy(model), native=False)
    native = optimize_for_cpu(copy.deepcopy(model), native=True, max_tokens=1 << 30)
    print(f"{args.model}, {args.threads} threads, medians of {args.rounds} interleaved calls")
    g = torch.Generator().manual_seed(0)
    for (batch, seqlen), padded in [(shape, padded) for shape in SHAPES for padded in (False, True) if padded <= (shape[0] > 1)]:
        ids = torch.randint(1000, model.config.vocab_size, (batch, seqlen), generator=g)
        # padded: lengths spread evenly from seqlen / 2 to seqlen (a quarter of the positions are padding)
        lengths = torch.linspace(seqlen // 2, seqlen, batch).round().long() if padded else None
        paths = {"layer-by-layer": lambda: layered(ids, None, lengths), "native": lambda: native(ids, None, lengths)}
        times = {name: [] for name in paths}
        with torch.inference_mode():
            for fn in paths.values():
                fn()
            for r in range(args.rounds):
                for name in (list(paths) if r % 2 else list(paths)[::-1]):
                    start = time.perf_counter()
                    paths[name]()
                    times[name].append(time.perf_counter() - start)
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        tokens = batch * seqlen if lengths is None else int(lengths.sum())
        print(f"{batch:>3} x {seqlen:<4} {'padded' if padded else 'full  '} ({tokens:>5} real tokens)  layer-by-layer {ms['layer-by-layer']:7.2f} ms"
              f"  native {ms['native']:7.2f} ms  native {ms['layer-by-layer'] / ms['native']:.2f}x", flush=True)
    assert native.cpu_encoder is not None and native.cpu_encoder.ready, "the native kernels did not run (see the warning)"


if __name__ == "__main__":
    main()
