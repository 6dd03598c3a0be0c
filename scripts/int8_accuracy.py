"""SST-2 dev accuracy of a fine-tuned classifier in fp32, under bertkit's int8 recipe and in bf16 (issue 23).

    python scripts/int8_accuracy.py runs/ablation/sst2-4000/random-2-epochs-s0 --data ../shared/data/glue_data/SST-2/dev.tsv

The same checkpoint, the same 872 sentences, `bertkit.predict` on: the model as loaded (the fp32
reference); what `bertkit predict` / `serve` run on the CPU (`cpu.optimize.for_inference`: the
compiled encoder) in fp32, with `--quantize int8` and with `--precision bf16` (CPUs with
AVX512_BF16); and the layer-by-layer forms of int8 (`quantize_int8`, also the torch int8 export) and
bf16 (autocast on the plain model). Prints each accuracy and how many predictions changed against fp32.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

import bertkit
from bertkit.cpu.int8 import quantize_int8
from bertkit.cpu.optimize import for_inference
from bertkit.device import native_bf16_cpu


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("classifier", type=Path)
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/glue_data/SST-2/dev.tsv")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [line.split("\t") for line in args.data.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    sentences, gold = [r[0] for r in rows], [r[1] for r in rows]
    model = bertkit.load(args.classifier).eval()
    labels = {}
    cpu = torch.device("cpu")
    fast = for_inference(copy.deepcopy(model), cpu)
    runs = [("fp32", model, "fp32"), ("fp32, compiled encoder", fast, "fp32"),
            ("int8, compiled encoder", for_inference(model, cpu, "fp32", "int8"), "fp32"),
            ("int8, Int8Linear layers", quantize_int8(model), "fp32")]
    if native_bf16_cpu():
        runs += [("bf16, compiled encoder", fast, "bf16"), ("bf16, autocast layers", model, "bf16")]
    for name, m, precision in runs:
        labels[name] = [r["label"] for r in bertkit.predict(m, sentences, precision=precision)]
        accuracy = sum(a == b for a, b in zip(labels[name], gold)) / len(gold)
        changed = sum(a != b for a, b in zip(labels["fp32"], labels[name]))
        print(f"{name}: accuracy {100 * accuracy:.2f} on {len(gold)} sentences; {changed} predictions differ from fp32")


if __name__ == "__main__":
    main()
