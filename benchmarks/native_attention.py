"""What the compiled encoder's attention kernel earns: one layer's self-attention over packed q|k|v rows
(`bertkit/cpu/native/encoder.cpp`, `attention`) against what the layer-by-layer path does for the same
rows (bertkit/model.py: repad to (B, T), bertkit.cpu.ops.attention with the key mask, which is
F.scaled_dot_product_attention at inference, back to the packed rows).

The lengths are those of real sentences (SST-2 dev, or --data) under the model's tokenizer: batch 1
(the first --limit-batch1 sentences one at a time) and batch 32 (the first --limit sentences in file
order); q|k|v are random (fixed seed: speed does not depend on the values); each layer call runs
--repeat times on the same rows, as inside a forward where the projection has just written them. Both
in one process, interleaved passes, medians; ms per layer call, the CPU model and flags printed.

    .venv/bin/python benchmarks/native_attention.py --threads 2
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

import bertkit
from bertkit.cpu.native.encoder import load_kernels
from bertkit.cpu.ops import attention
from bertkit.padding import real_token_indices, repad

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encoder import read_sentences  # noqa: E402
from native_paths import arguments  # noqa: E402
from profile_ops import platform_line  # noqa: E402


def layer_path(qkv, lengths, heads, hd):
    """The layer-by-layer path's attention for packed rows, (N, 3H) -> (N, H), as BertLayer.attention
    runs it: repad, bertkit.cpu.ops.attention (SDPA at inference; it scales q by 1 / sqrt(hd)), unpad."""
    batch, seqlen = len(lengths), max(lengths)
    mask = torch.arange(seqlen)[None, :] < torch.tensor(lengths)[:, None]
    indices = real_token_indices(mask)
    q, k, v = repad(qkv, indices, batch, seqlen).view(batch, seqlen, 3, heads, hd).permute(2, 0, 3, 1, 4)
    out = attention(q, k, v, mask[:, None, None, :], 0.0, False)
    return out.transpose(1, 2).reshape(batch * seqlen, -1).index_select(0, indices)


def main(argv=None):
    p = arguments(__doc__.split("\n\n")[0], limit=872)
    p.add_argument("--repeat", type=int, default=5, help="calls per batch in a pass (default 5)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    kernels = load_kernels()
    if kernels is None:
        sys.exit("native_attention: the compiled encoder kernels did not build on this machine")
    model = bertkit.load(args.model)
    heads, hd = model.config.num_attention_heads, model.config.head_dim
    sentences = read_sentences(args.data, None)
    print(f"{platform_line()}; {args.threads} threads; {args.model} ({heads} heads of {hd}); "
          f"medians of {args.rounds} interleaved passes")
    print("| batch | calls | real tokens per call | native ms | layer path ms | layer path / native | max abs diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    g = torch.Generator().manual_seed(0)
    for batch_size, limit in ((1, args.limit_batch1), (32, args.limit)):
        lengths = [model.tokenizer(sentences[i:i + batch_size]).valid_lengths.tolist()
                   for i in range(0, min(limit, len(sentences)), batch_size)]
        rows = [torch.randn(sum(n), 3 * heads * hd, generator=g) for n in lengths]
        # the kernel takes q already scaled by 1 / sqrt(hd) (the compiled encoder folds it into the q
        # weights); the layer path scales q itself: it gets the same rows with q unscaled
        unscaled = [torch.cat([x[:, :heads * hd] * hd ** 0.5, x[:, heads * hd:]], 1) for x in rows]
        inputs = {"native": rows, "layers": unscaled}
        paths = {"native": lambda qkv, n: kernels.attention(qkv, n, heads),
                 "layers": lambda qkv, n: layer_path(qkv, n, heads, hd)}
        diff = max((paths["native"](x, n) - paths["layers"](y, n)).abs().max().item()
                   for x, y, n in zip(rows, unscaled, lengths))
        times = {name: [] for name in paths}
        with torch.inference_mode():
            for r in range(args.rounds + 1):  # the first round warms up and is dropped
                for name in (list(paths) if r % 2 else list(paths)[::-1]):
                    start = time.perf_counter()
                    for x, n in zip(inputs[name], lengths):
                        for _ in range(args.repeat):
                            paths[name](x, n)
                    times[name].append((time.perf_counter() - start) / (len(rows) * args.repeat))
        native, layers = (1000 * statistics.median(times[name][1:]) for name in ("native", "layers"))
        print(f"| {batch_size} | {len(rows)} | {sum(map(sum, lengths)) / len(rows):.1f} | {native:.3f} | {layers:.3f} | "
              f"{layers / native:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
