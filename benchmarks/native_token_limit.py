"""Up to how many tokens the native encoder kernels beat the layer-by-layer path (optimize_for_cpu's
`max_tokens`): one unpadded input of each shape, both paths with MKL-packed weights, interleaved calls,
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

SHAPES = [(1, 64), (1, 128), (2, 128), (1, 256), (4, 64), (1, 384), (8, 64), (1, 512), (16, 32)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = bertkit.load(args.model).eval()
    layered = optimize_for_cpu(copy.deepcopy(model), native=False)
    native = optimize_for_cpu(copy.deepcopy(model), max_tokens=1 << 30)
    print(f"{args.model}, {args.threads} threads, medians of {args.rounds} interleaved calls")
    g = torch.Generator().manual_seed(0)
    for batch, seqlen in SHAPES:
        ids = torch.randint(1000, model.config.vocab_size, (batch, seqlen), generator=g)
        paths = {"layer-by-layer": lambda: layered(ids), "native": lambda: native(ids)}
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
        print(f"{batch:>3} x {seqlen:<4} ({batch * seqlen:>4} tokens)  layer-by-layer {ms['layer-by-layer']:7.2f} ms"
              f"  native {ms['native']:7.2f} ms  native {ms['layer-by-layer'] / ms['native']:.2f}x", flush=True)
    assert native.cpu_encoder is not None and native.cpu_encoder.ready, "the native kernels did not run (see the warning)"


if __name__ == "__main__":
    main()
