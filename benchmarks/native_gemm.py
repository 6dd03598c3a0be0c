"""The compiled encoder's own GEMM against PyTorch's, at the row counts BERT inference meets.

One forward's worth of matrix multiplies of all-minilm-l6-v2's shape (6 layers of Q/K/V 384->1152,
attention output 384->384, feed-forward 384->1536 and 1536->384, each layer its own random weights:
42 MB, more than a core's caches, as in a real forward), on M input rows:
  native   bertkit/cpu/native's packed float32 GEMM (bias inside), the compiled encoder's
  onednn   oneDNN's GEMM on its re-laid-out weight (torch.ops.mkldnn._linear_pointwise, bias inside)
  mkl      MKL's packed GEMM (torch.ops.mkl._mkl_linear), where PyTorch has MKL
  addmm    F.linear (PyTorch's default CPU GEMM)
Interleaved passes, medians; GFLOP/s counts 2 M K N per multiply. The machine's float32 peak is
measured first (independent fused multiply-adds in registers on every thread, a kernel compiled
here), so each figure can be read as a fraction of it.

    .venv/bin/python benchmarks/native_gemm.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bertkit.cpu.dispatch import mkl_packing_available
from bertkit.cpu.native.encoder import load_kernels

_PEAK_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
// `iterations` x 16 independent vector FMAs on each thread: the FMA units' throughput
double fma_loop(int64_t iterations) {
  typedef float vec __attribute__((vector_size(64)));
  std::vector<float> sink(at::get_num_threads() * 16);
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t begin, int64_t end) {
    vec acc[16];
    for (int i = 0; i < 16; ++i) acc[i] = vec{} + float(i);
    const vec x = vec{} + 1.0000001f, y = vec{} + 0.999999f;
    for (int64_t it = 0; it < iterations; ++it)
      for (int i = 0; i < 16; ++i) acc[i] = acc[i] * x + y;
    for (int i = 0; i < 16; ++i) sink[begin * 16 + i] = acc[i][0];
  });
  return sink[0];
}
"""


def fma_peak_gflops(threads: int) -> float:
    """GFLOP/s of independent 16-float fused multiply-adds on `threads` threads (AVX-512 builds)."""
    from torch.utils.cpp_extension import load_inline

    module = load_inline("bertkit_fma_peak", [_PEAK_SOURCE], functions=["fma_loop"],
                         extra_cflags=["-O3", "-fopenmp", "-mavx512f", "-mfma"], extra_ldflags=["-fopenmp"])
    module.fma_loop(1000)
    iterations = 20_000_000
    start = time.perf_counter()
    module.fma_loop(iterations)
    return threads * iterations * 16 * 32 / (time.perf_counter() - start) / 1e9


SHAPES = [(1152, 384), (384, 384), (1536, 384), (384, 1536)]  # (out, in) of one MiniLM layer's Linears


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8, 25, 64, 256, 784])
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    kernels = load_kernels()
    assert kernels is not None, "the compiled encoder does not build here"
    g = torch.Generator().manual_seed(0)
    layers = [[(torch.randn(n, k, generator=g) / k ** 0.5, torch.randn(n, generator=g)) for n, k in SHAPES] for _ in range(6)]
    native = [[kernels.pack_linear(w, b) for w, b in layer] for layer in layers]
    peak = fma_peak_gflops(args.threads)
    print(f"{args.threads} threads; {torch.__version__}; float32 FMA peak {peak:.0f} GFLOP/s; one forward's matrix "
          "multiplies (6 x 4 Linears, 42 MB of weights)")
    print("| rows | " + " | ".join(["native", "onednn", "mkl", "addmm"]) + " | native / best other | native / peak |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for m in args.rows:
        xs = [torch.randn(m, k, generator=g) for _, k in SHAPES]
        onednn = [[torch.ops.mkldnn._reorder_linear_weight(w, m) for w, _ in layer] for layer in layers]
        paths = {
            "native": lambda: [kernels.linear(x, [pw], w.shape[0], 0) for layer, packs in zip(layers, native)
                               for (w, _), pw, x in zip(layer, packs, xs)],
            "onednn": lambda: [torch.ops.mkldnn._linear_pointwise(x, dw, b, "none", [], "") for layer, dws in zip(layers, onednn)
                               for (_, b), dw, x in zip(layer, dws, xs)],
            "addmm": lambda: [F.linear(x, w, b) for layer in layers for (w, b), x in zip(layer, xs)],
        }
        if mkl_packing_available():
            mkl = [[torch.ops.mkl._mkl_reorder_linear_weight(w, m) for w, _ in layer] for layer in layers]
            paths["mkl"] = lambda: [torch.ops.mkl._mkl_linear(x, pw, w, b, m) for layer, pws in zip(layers, mkl)
                                    for (w, b), pw, x in zip(layer, pws, xs)]
        for (w, b), pw, x in zip(layers[0], native[0], xs):  # the same numbers first
            assert (kernels.linear(x, [pw], w.shape[0], 0) - F.linear(x, w, b)).abs().max() < 1e-4
        times = {name: [] for name in paths}
        with torch.inference_mode():
            for r in range(args.rounds + 1):
                for name in (list(paths) if r % 2 else list(paths)[::-1]):
                    start = time.perf_counter()
                    paths[name]()
                    times[name].append(time.perf_counter() - start)
        flops = 6 * sum(2 * m * n * k for n, k in SHAPES)
        rate = {name: flops / statistics.median(t[1:]) / 1e9 for name, t in times.items()}
        cells = [f"{rate[name]:.0f} GFLOP/s" if name in rate else "-" for name in ("native", "onednn", "mkl", "addmm")]
        best_other = max(v for name, v in rate.items() if name != "native")
        print(f"| {m} | " + " | ".join(cells) + f" | {rate['native'] / best_other:.2f}x | {rate['native'] / peak:.0%} |", flush=True)


if __name__ == "__main__":
    main()
