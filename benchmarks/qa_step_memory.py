"""Peak memory of one QA training step (forward + backward), bertkit against transformers.

    python benchmarks/qa_step_memory.py --batch-size 16 --length 384

Each model runs in its own fresh process (so neither sees the other's freed memory), on the same
seeded batch of full-length windows, one thread; the figure is the growth of the process's peak
resident set over the step, i.e. what the step's activations and gradients need.
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch
sys.path.insert(0, {bench!r})
torch.set_num_threads(1)
import bertkit
from bertkit.train.squad import span_loss
directory = bertkit.resolve({model!r})
if {which!r} == "bertkit":
    model = bertkit.load(directory, head="question_answering")
else:
    from transformers import BertForQuestionAnswering
    from squad_hf_baseline import HFSpanModel
    model = HFSpanModel(BertForQuestionAnswering.from_pretrained(directory))
model.train()
g = torch.Generator().manual_seed(0)
ids = torch.randint(1000, 20000, ({batch}, {length}), generator=g)
lengths = torch.full(({batch},), {length})
targets = torch.zeros({batch}, dtype=torch.long)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
span_loss(*model(ids, torch.zeros_like(ids), lengths), lengths, targets, targets + 5).backward()
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024))
"""


def main():
    from pathlib import Path

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--length", type=int, default=384)
    args = p.parse_args()
    bench = str(Path(__file__).resolve().parent)
    for which in ("bertkit", "transformers"):
        code = CHILD.format(bench=bench, model=args.model, which=which, batch=args.batch_size, length=args.length)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        print(f"{which}: peak RSS grew {json.loads(out.strip().splitlines()[-1])} MB over one step "
              f"({args.batch_size} x {args.length} tokens)")


if __name__ == "__main__":
    main()
