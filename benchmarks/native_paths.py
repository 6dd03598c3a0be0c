"""What each piece of the compiled encoder earns: every precision through the compiled encoder
(`bertkit/cpu/native`) against the layer-by-layer path in the same precision, on real sentences.

  fp32   for_inference (compiled encoder, own GEMMs)  vs  optimize_for_cpu(native=False) (oneDNN layers)
  bf16   the same under bf16 autocast (AVX512_BF16 GEMMs)  vs  the plain model under bf16 autocast
  int8   for_inference(quantize="int8") (VNNI GEMMs)  vs  quantize_int8 alone (Int8Linear layers)

SST-2 dev (or --data), batch 1 (the first --limit-batch1 sentences one at a time) and batch 32 (the
first --limit sentences in file order, padded batches with their valid lengths); all paths in one
process, interleaved passes, medians; real tokens per second. The CPU model and flags are printed.

    .venv/bin/python benchmarks/native_paths.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

import bertkit
from bertkit.cpu import optimize_for_cpu
from bertkit.cpu.int8 import quantize_int8
from bertkit.cpu.native.encoder import load_kernels
from bertkit.cpu.optimize import for_inference, inference_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encoder import DEFAULT_DATA, read_sentences  # noqa: E402
from profile_ops import platform_line  # noqa: E402


def arguments(description: str, limit: int) -> argparse.ArgumentParser:
    """The options of the compiled encoder's benchmarks (this one, native_attention.py): the model, the
    sentences, threads, rounds, and how many sentences batch 1 and batch 32 take."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a TSV whose first column is a sentence, with a header")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--limit-batch1", type=int, default=200)
    p.add_argument("--limit", type=int, default=limit)
    return p


def main(argv=None):
    args = arguments(__doc__.split("\n\n")[0], limit=640).parse_args(argv)
    torch.set_num_threads(args.threads)
    sentences = read_sentences(args.data, None)
    model = bertkit.load(args.model).eval()
    cpu = torch.device("cpu")
    modes = {"fp32": None, "bf16": torch.bfloat16, "int8": None}
    paths = {
        ("fp32", "compiled"): for_inference(copy.deepcopy(model), cpu),
        ("fp32", "layers"): optimize_for_cpu(copy.deepcopy(model), native=False),
    }
    kernels = load_kernels()  # bf16 and int8 only where the kernels run them (else both columns are the layer path)
    if kernels is not None and kernels.int8_supported():
        paths[("int8", "compiled")] = for_inference(model, cpu, "fp32", "int8")
        paths[("int8", "layers")] = quantize_int8(model)
    if kernels is not None and kernels.bf16_supported():
        paths[("bf16", "compiled")] = paths[("fp32", "compiled")]
        paths[("bf16", "layers")] = model
    print(f"{platform_line()}; {args.threads} threads; {args.model}; medians of {args.rounds} interleaved passes")
    for mode in ("fp32", "bf16", "int8"):
        print(f"  {inference_path(model.config, mode if mode != 'int8' else 'fp32', 'int8' if mode == 'int8' else None)}")
    for batch_size, limit in ((1, args.limit_batch1), (32, args.limit)):
        batches = [model.tokenizer(sentences[i:i + batch_size]) for i in range(0, min(limit, len(sentences)), batch_size)]
        tokens = sum(int(b.valid_lengths.sum()) for b in batches)
        times = {key: [] for key in paths}
        with torch.inference_mode():
            for r in range(args.rounds + 1):  # the first round warms up (packs weights) and is dropped
                for key in (list(paths) if r % 2 else list(paths)[::-1]):
                    path = paths[key]
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=modes[key[0]] is not None):
                        start = time.perf_counter()
                        for b in batches:
                            path(b)
                        times[key].append(time.perf_counter() - start)
        print(f"\nbatch {batch_size}: {len(batches)} passes of {tokens} real tokens in all")
        print("| precision | compiled encoder tok/s | layer-by-layer tok/s | compiled / layers |")
        print("|---|---:|---:|---:|")
        for mode in modes:
            if (mode, "compiled") not in paths:
                continue
            fast, slow = (tokens / statistics.median(times[(mode, kind)][1:]) for kind in ("compiled", "layers"))
            print(f"| {mode} | {fast:,.0f} | {slow:,.0f} | {fast / slow:.2f}x |", flush=True)
    assert paths[("fp32", "compiled")].cpu_encoder is not None and paths[("fp32", "compiled")].cpu_encoder.ready


if __name__ == "__main__":
    main()
