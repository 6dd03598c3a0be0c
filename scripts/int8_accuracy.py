"""SST-2 dev accuracy of a fine-tuned classifier in fp32, under bertkit's int8 recipe and in bf16 (issue 23).

    python scripts/int8_accuracy.py runs/ablation/sst2-4000/random-2-epochs-s0 --data ../shared/data/glue_data/SST-2/dev.tsv

The same checkpoint, the same 872 sentences: `bertkit.predict` on the model as loaded, then on
`bertkit.cpu.int8.quantize_int8(model)` (what `bertkit serve --quantize int8` and the torch int8
export run), then on the model under bf16 autocast (`--precision bf16`; CPUs with avx512_bf16 or
AMX); prints each accuracy and how many predictions changed against fp32.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch

import bertkit
from bertkit.cpu.int8 import quantize_int8


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
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    for name, m, context in (("fp32", model, contextlib.nullcontext()), ("int8", quantize_int8(model), contextlib.nullcontext()),
                             ("bf16", model, bf16)):
        with context:
            labels[name] = [r["label"] for r in bertkit.predict(m, sentences)]
        accuracy = sum(a == b for a, b in zip(labels[name], gold)) / len(gold)
        changed = sum(a != b for a, b in zip(labels["fp32"], labels[name]))
        print(f"{name}: accuracy {100 * accuracy:.2f} on {len(gold)} sentences; {changed} predictions differ from fp32")


if __name__ == "__main__":
    main()
