"""Where training numbers go: `metrics.jsonl` always, TensorBoard when installed, a PNG on request."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLog:
    """Appends one JSON object per logged step to `out_dir/metrics.jsonl`.

    On resume, rows past the resumed step (logged after that checkpoint by the run that died) are
    dropped first, so the file reads as one uninterrupted run.
    """

    def __init__(self, out_dir: Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(out_dir) / "metrics.jsonl"
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self._tb = None

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def flat_metrics(results: dict, prefix: str = "") -> dict:
    """{"dev": {"f1": .., "per_type": {"PER": {"f1": ..}}}} -> {"dev_f1": .., "dev_per_type_PER_f1": ..}:
    a metrics.jsonl row's keys for nested metrics (numbers rounded to 6 places)."""
    row = {}
    for k, v in results.items():
        key = f"{prefix}_{k}" if prefix else str(k)
        if isinstance(v, dict):
            row.update(flat_metrics(v, key))
        elif isinstance(v, (int, float)):
            row[key] = round(v, 6) if isinstance(v, float) else v
    return row


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_metrics(metrics_path: Path, png_path: Path) -> Path | None:
    """Loss curves (train MLM/NSP, eval MLM) and eval accuracies to a PNG. None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(metrics_path)
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_mlm_accuracy" in r]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("loss", "total loss"), ("mlm_loss", "MLM loss"), ("nsp_loss", "NSP loss")):
        if train and key in train[0]:  # no NSP columns for masked-LM-only runs
            ax_loss.plot([r["step"] for r in train], [r[key] for r in train], label=label, linewidth=1)
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["eval_mlm_loss"] for r in evals], "o-", label="eval MLM loss")
        for key, label in (("eval_mlm_accuracy", "eval MLM accuracy"), ("eval_nsp_accuracy", "eval NSP accuracy")):
            if key in evals[0]:
                ax_acc.plot([r["step"] for r in evals], [r[key] for r in evals], "o-", label=label)
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="held-out accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)
