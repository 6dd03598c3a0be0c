"""Summarise runs/glue/*/eval_results.json (written by scripts/finetune_results.sh) as markdown rows.

For each implementation and task: the seeds found, each seed's dev metrics (best epoch), the median
over seeds, and the training seconds per epoch (median over all epochs of all seeds).

    python scripts/finetune_table.py [runs/glue]
"""

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

METRICS = {"sst-2": ["accuracy"], "mrpc": ["f1", "accuracy"], "sts-b": ["pearson", "spearman"], "rte": ["accuracy"],
           "cola": ["mcc"]}


def main(root="runs/glue"):
    groups = defaultdict(list)
    for f in sorted(Path(root).glob("*/eval_results.json")):
        name = re.fullmatch(r"(bertkit|hf)-(.+)-s(\d+)", f.parent.name)  # other directories are side runs
        if name:
            impl, task, seed = name.groups()
            groups[(task, impl)].append((int(seed), json.loads(f.read_text())))
    print("| task | impl | seeds | metric: per seed -> median | best epochs | train s/epoch (median) | wall s per run | threads |")
    print("|---|---|---|---|---|---|---|---|")
    for (task, impl), runs in sorted(groups.items()):
        runs.sort()
        cells = []
        for m in METRICS.get(task, ["accuracy"]):
            vals = [r["dev"][m] * 100 for _, r in runs]
            cells.append(f"{m} " + " / ".join(f"{v:.1f}" for v in vals) + f" -> **{statistics.median(vals):.1f}**")
        secs = [s for _, r in runs for s in r["train_seconds_per_epoch"]]
        print(f"| {task} | {impl} | {','.join(str(s) for s, _ in runs)} | {'; '.join(cells)} | "
              f"{','.join(str(r['best_epoch']) for _, r in runs)} | {statistics.median(secs):.0f} | "
              f"{' / '.join(str(round(r['wall_seconds'])) for _, r in runs)} | {','.join(str(r.get('torch_threads')) for _, r in runs)} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
