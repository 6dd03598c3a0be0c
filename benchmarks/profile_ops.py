"""Where the time of one forward pass goes, per kind of op: bertkit's CPU paths against ONNX Runtime.

    python benchmarks/profile_ops.py --threads 2 --batch-size 1 --limit 200
    python benchmarks/profile_ops.py --threads 2 --batch-size 32

The same token ids (SST-2 dev in file order, all-minilm-l6-v2, fp32) go through
  bertkit-plain    every Linear through addmm (MKL's sgemm), GELU and adds as separate ops
                   (optimize_for_cpu(packed_rows=0, fuse=False, native=False))
  bertkit-onednn   oneDNN's GEMM for every Linear, bias / GELU / residual add inside it
                   (optimize_for_cpu(packed_rows=0, native=False))
  bertkit-layers   bertkit's layer-by-layer default (optimize_for_cpu(native=False)): on Intel MKL's
                   packed GEMM up to 256 rows, oneDNN above; elsewhere oneDNN
  bertkit-native   the compiled encoder (optimize_for_cpu(), fp32): its own stage clock, not PyTorch's
                   profiler (its kernels are no PyTorch ops); GEMM includes the GELU applied as it stores
  bertkit-native-bf16, bertkit-native-int8   the same under bf16 autocast / with --quantize int8
  ort              transformers' graph with ONNX Runtime's BERT fusions (as benchmarks/bench_onnx.py)
For each: the wall time per batch without a profiler (median of --rounds passes), then one profiled
pass whose op self-times are summed by kind (GEMM, attention, LayerNorm, GELU, embedding, other ops);
"outside ops" is the unprofiled wall time less those sums: Python, the dispatcher, allocation, thread
wake-ups. PyTorch's profiler adds a few microseconds to each op, so per-op sums for the PyTorch paths
are upper bounds. ONNX Runtime's are its own node timings (session profiling).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

import bertkit
from bertkit.cpu import optimize_for_cpu
from bertkit.cpu.native.encoder import load_kernels
from bertkit.cpu.optimize import for_inference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encoder import DEFAULT_DATA, read_sentences  # noqa: E402
from bench_onnx import make_batches, ort_session, transformers_onnx  # noqa: E402

# op name (PyTorch aten/mkl/mkldnn op or ONNX Runtime op type) -> kind; the first matching prefix wins
KINDS = [("GEMM", ("aten::addmm", "aten::mm", "aten::bmm", "mkl::", "mkldnn::_linear", "aten::linear", "MatMul",
                   "FusedMatMul", "Gemm", "QAttention", "DynamicQuantizeMatMul", "MatMulInteger")),
         ("attention", ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product", "aten::softmax",
                        "aten::_softmax", "Attention", "MultiHeadAttention", "Softmax")),
         ("LayerNorm", ("aten::layer_norm", "aten::native_layer_norm", "LayerNormalization", "SkipLayerNormalization",
                        "EmbedLayerNormalization")),
         ("GELU", ("aten::gelu", "BiasGelu", "Gelu", "FastGelu")),
         ("embedding", ("aten::embedding", "aten::index_select", "Gather"))]


def kind_of(name: str) -> str:
    for kind, prefixes in KINDS:
        if name.startswith(prefixes):
            return kind
    return "other ops"


def torch_profile(fn, batches) -> dict[str, float]:
    """Seconds of self CPU time per op kind over one pass (top-level ops' children counted once each)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches:
            fn(b)
    sums: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        sums[kind_of(event.key)] += event.self_cpu_time_total / 1e6
    return dict(sums)


def ort_profile(session_factory, batches) -> dict[str, float]:
    """Seconds per op kind over one pass, from ONNX Runtime's own node timings."""
    session = session_factory(profile=True)
    for b in batches:
        session.run(None, {"input_ids": b.np_ids, "attention_mask": b.np_mask, "token_type_ids": b.np_segs})
    trace = json.loads(Path(session.end_profiling()).read_text())
    sums: dict[str, float] = defaultdict(float)
    for e in trace:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            sums[kind_of(e["args"]["op_name"])] += e["dur"] / 1e6
    return dict(sums)


def native_profile(fn, batches) -> dict[str, float]:
    """Seconds per stage over one pass, from the compiled encoder's own clock."""
    kernels = load_kernels()
    kernels.stage_seconds()
    kernels.set_profiling(True)
    try:
        for b in batches:
            fn(b)
    finally:
        kernels.set_profiling(False)
    return kernels.stage_seconds()


def contenders(model, directory, workdir: Path, threads: int):
    def bertkit_path(**settings):
        m = optimize_for_cpu(copy.deepcopy(model), **settings)
        return lambda b: m(b.input_ids, b.segment_ids, b.valid_lengths)

    native_int8 = for_inference(model, torch.device("cpu"), "fp32", "int8")
    native_fp32 = bertkit_path()

    def native_bf16(b):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return native_fp32(b)

    fused = transformers_onnx(directory, workdir, model.config)

    def session(profile=False):
        if not profile:
            return ort_session(fused, threads)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.enable_profiling, options.profile_file_prefix = True, str(workdir / "ort-profile")
        return ort.InferenceSession(str(fused), options, providers=["CPUExecutionProvider"])

    plain_ort = session()
    kernels = load_kernels()
    return {  # name -> (one batch's forward, its profiler: (forward, batches) -> seconds per kind)
        "bertkit-plain": (bertkit_path(packed_rows=0, fuse=False, native=False), torch_profile),
        "bertkit-onednn": (bertkit_path(packed_rows=0, native=False), torch_profile),
        "bertkit-layers": (bertkit_path(native=False), torch_profile),
        "bertkit-native": (native_fp32, native_profile),
        # only where the CPU has the kernels' instructions (elsewhere they run the layer path)
        **({"bertkit-native-bf16": (native_bf16, native_profile)} if kernels.bf16_supported() else {}),
        **({"bertkit-native-int8": (lambda b: native_int8(b.input_ids, b.segment_ids, b.valid_lengths), native_profile)}
           if kernels.int8_supported() else {}),
        "ort": (lambda b: plain_ort.run(None, {"input_ids": b.np_ids, "attention_mask": b.np_mask,
                                               "token_type_ids": b.np_segs}), lambda fn, batches: ort_profile(session, batches)),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--limit", type=int, default=200, help="the first N sentences")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    directory = bertkit.resolve(args.model)
    model = bertkit.load(directory).eval()
    sentences = read_sentences(args.data, args.limit)
    batches = make_batches(model.tokenizer, sentences, args.batch_size)
    tokens = sum(int(b.valid_lengths.sum()) for b in batches)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        runs = contenders(model, directory, Path(tmp), args.threads)
        walls: dict[str, list[float]] = defaultdict(list)
        for r in range(args.rounds + 1):  # round 0 warms up
            for name, (fn, _) in (list(runs.items()) if r % 2 else list(runs.items())[::-1]):
                t = time.perf_counter()
                for b in batches:
                    fn(b)
                if r:
                    walls[name].append(time.perf_counter() - t)
        kinds = [k for k, _ in KINDS] + ["other ops"]
        print(f"\n{platform_line()}; {args.threads} threads; {len(batches)} batches of {args.batch_size}, "
              f"{tokens} real tokens; ms per batch (wall: median of {args.rounds})\n")
        print("| path | wall | tok/s | " + " | ".join(kinds) + " | outside ops |")
        print("|---|" + "---:|" * (len(kinds) + 3))
        for name, (fn, profile) in runs.items():
            wall = statistics.median(walls[name])
            sums = profile(fn, batches)
            cells = [sums.get(k, 0.0) for k in kinds]
            ms = lambda s: f"{1e3 * s / len(batches):.3f}"  # noqa: E731
            print(f"| {name} | {ms(wall)} | {tokens / wall:,.0f} | " + " | ".join(ms(c) for c in cells)
                  + f" | {ms(wall - sum(cells))} |", flush=True)


def platform_line() -> str:
    info = {k.strip(): v for k, v in (line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                                      if ":" in line)}
    flags = info.get("flags", "").split()
    isa = " ".join(f for f in flags if f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"))
    return f"{info.get('vendor_id', '?').strip()} {info.get('model name', '?').strip()} ({isa}); torch {torch.__version__}"


if __name__ == "__main__":
    main()
