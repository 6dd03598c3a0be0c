"""Summarise runs/ner/*/eval_results.json (written by scripts/ner_results.sh) as markdown rows.

For each implementation: the seeds found, each seed's dev (eng.testa) and test (eng.testb) entity F1
at the best epoch (picked on dev), their medians, per-type test F1 medians, the training seconds
per epoch, the wall seconds and peak resident memory of each run.

    python scripts/ner_table.py [runs/ner]
"""

import json
import re
import statistics
import sys
from pathlib import Path


def main(root="runs/ner"):
    groups = {}
    for f in sorted(Path(root).glob("*/eval_results.json")):
        name = re.fullmatch(r"(bertkit|hf)-s(\d+)", f.parent.name)  # other directories are side runs
        if name:
            groups.setdefault(name[1], []).append((int(name[2]), json.loads(f.read_text())))
    print("| impl | seeds | dev F1: per seed -> median | test F1: per seed -> median | test F1 per type (median) "
          "| best epochs | train s / epoch | wall s / run | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for impl, runs in sorted(groups.items()):
        runs.sort(key=lambda r: r[0])
        cells = []
        for split in ("dev", "test"):
            vals = [r[split]["f1"] * 100 for _, r in runs]
            cells.append(" / ".join(f"{v:.2f}" for v in vals) + f" -> **{statistics.median(vals):.2f}**")
        types = runs[0][1]["test"]["per_type"]
        per_type = ", ".join(f"{t} {statistics.median(r['test']['per_type'][t]['f1'] * 100 for _, r in runs):.1f}" for t in types)
        secs = [round(s) for _, r in runs for s in r["train_seconds_per_epoch"]]
        print(f"| {impl} | {','.join(str(s) for s, _ in runs)} | {cells[0]} | {cells[1]} | {per_type} | "
              f"{','.join(str(r['best_epoch']) for _, r in runs)} | {' / '.join(map(str, secs))} | "
              f"{' / '.join(str(round(r['wall_seconds'])) for _, r in runs)} | "
              f"{' / '.join(str(round(r['peak_rss_mb'])) for _, r in runs)} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
