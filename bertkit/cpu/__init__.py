"""Everything that makes bertkit fast on a CPU, behind one entry point.

    from bertkit.cpu import optimize_for_cpu
    optimize_for_cpu(model)   # in place: the compiled encoder, and this CPU's GEMMs for the layer path

optimize.py      `optimize_for_cpu(model, *, native, max_tokens, packed_rows, fuse)`, `for_inference`
                 (what `bertkit serve`, `embed` and `predict` run: fp32, bf16 or int8) and
                 `inference_path` (which path runs and why: `bertkit info`, serve's startup log)
ops.py           the interface bertkit/model.py calls: the linear with its epilogue, attention with
                 dropout, Dropout, the activation table (every model gets these, optimized or not)
dispatch.py      `kernel()`: which kernel a tensor reaches, with the table of conditions
onednn.py        oneDNN's Linear with the bias, GELU or residual add inside the GEMM (inference)
packed_linear.py MKL's packed GEMM for small inputs on the layer path (PackedLinear; Intel CPUs)
int8.py          int8 inference: per-channel int8 weights, per-token int8 activations (Int8Linear)
dropout.py       the byte-mask dropout and the one-step softmax-dropout-matmul (training)
weight_cache.py  when a re-laid-out weight copy is stale (its global hooks come with the first copy)
native/          the encoder as compiled C++ kernels: own fp32 / bf16 / int8 GEMMs, padding skipped
threads.py       OpenMP thread count and wait policy, set before the runtime loads
allocator.py     glibc malloc keeps freed memory (the `bertkit` command applies it)

Nothing in this package imports bertkit outside it except leaf modules (config, device, errors, padding),
and `import bertkit` loads this file (for threads.py) before torch, so it imports no torch itself:
`optimize_for_cpu` is imported on first use (PEP 562).
"""

import importlib


def __getattr__(name):
    if name == "optimize_for_cpu":
        value = importlib.import_module(".optimize", __name__).optimize_for_cpu
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bertkit.cpu' has no attribute {name!r}")


__all__ = ["optimize_for_cpu"]
