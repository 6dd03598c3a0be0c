"""Fine-tuning a BERT checkpoint on a classification or regression task.

    from bertkit.train.finetune import FinetuneConfig, finetune
    results = finetune("mrpc", "glue_data/MRPC", "all-minilm-l6-v2", "out/mrpc", FinetuneConfig(epochs=3))

The pooled [CLS] vector feeds a fresh linear head (cross-entropy for classification, mean squared
error for regression). Batches are drawn at random: each epoch shuffles the training set and cuts it
into batches. `bucket_batches` = N > 1 instead sorts groups of N batches by length (less padding
for attention, which is the only part of bertkit's model that computes on padding), but a batch of
texts of similar length is a batch of similar texts (CoNLL's short sports-table rows, SST-2's
one-word phrases): its gradient is correlated, and with N = 50, bertkit's default until issue 18,
the CoNLL tagging split scored 5.4 F1 points below random batches (docs/results.md, "Why bertkit
scored lower"). After each epoch the
dev set is scored with the task's metrics; the weights of the best epoch (by the task's main
metric on its first dev split) are what `out` holds at the end, as a checkpoint directory that
bertkit and transformers load, with `eval_results.json` and `metrics.jsonl` beside it.
The loop (`train_epochs`) and the saving of a run (`write_run`) are shared with token
classification (tagging/train.py), which brings its own data, loss and metric.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BertkitError
from ..tasks.metrics import compute_metrics
from ..tasks.readers import Task, TaskData, get_task, load_task_data
from ..tokenizer import TruncationWarning
from .optim import apply_gradients, build_optimizer, linear_warmup_decay, warmup_steps_for


@dataclass
class FinetuneConfig:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    optimizer: str = "adamw"  # adamw | bertadam | lamb
    epsilon: float = 1e-6
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_len: int = 128
    seed: int = 0
    accumulate: int = 1  # gradient accumulation: an optimizer step every N batches
    max_grad_norm: float = 1.0  # 0 turns clipping off
    eval_batch_size: int = 128
    max_train_examples: int | None = None  # a seeded random subset of the training set
    bucket_batches: int = 1  # batches per length-sorted group; 1: plain shuffled batches (see the module docstring)
    log_every: int = 50  # optimizer steps between metrics.jsonl rows
    progress: bool = True  # a tqdm bar per epoch (stderr)
    eval_before: bool = False  # score the dev set before training too (epoch 0)

    def check(self) -> None:
        for name in ("epochs", "batch_size", "accumulate", "eval_batch_size", "bucket_batches", "log_every"):
            if int(getattr(self, name)) < 1:
                raise BertkitError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise BertkitError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_len < 3:
            raise BertkitError(f"--max-len must be at least 3, got {self.max_len}")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise BertkitError(f"--max-train-examples must be at least 1, got {self.max_train_examples}")


# ---- model ----------------------------------------------------------------------------------
def build_task_model(model_name: str, task: Task, labels: list[str] | None, new_head: bool = False):
    """A BertForSequenceClassification (or, for a tagging task, BertForTokenClassification) for
    `task` from a checkpoint, with the checkpoint's tokenizer.

    An encoder or pretraining checkpoint gets a fresh head. A checkpoint that already has a task
    head keeps it when it is for the same task and labels; otherwise it is refused, unless
    `new_head` (then the head is re-initialised and only the encoder is kept).
    """
    from ..checkpoint import load_config, load_hf_state_dict, read_bertkit_info, read_weights, resolve, saved_head, saved_labels
    from ..model import BertForSequenceClassification, BertForTokenClassification
    from ..tokenizer import BertTokenizer

    directory = resolve(model_name)
    cfg = load_config(directory)
    info = read_bertkit_info(directory)
    if not (directory / "vocab.txt").is_file():
        raise BertkitError(f"{directory}: has no vocab.txt; fine-tuning needs the checkpoint's vocabulary")
    tokenizer = BertTokenizer.from_dir(directory)
    weights = read_weights(directory)
    head = saved_head(cfg, info)
    has_head = head not in ("encoder", "pretraining") or any(k.startswith("classifier.") for k in weights)
    keep_head = False
    if has_head:
        ck_task = info.get("task")
        ck_labels = info.get("labels") if head not in ("classification", "token_classification") else saved_labels(cfg, info)
        agree = head == task.head and ck_task in (None, task.name) and (task.kind == "regression" or ck_labels == labels)
        if agree:
            keep_head = True
        elif not new_head:
            what = f"a {head} head" + (f" for task {ck_task}" if ck_task else "") + (
                f" with labels {ck_labels}" if ck_labels and head in ("classification", "token_classification") else "")
            need = f"a {task.head} head" + (f" with labels {labels}" if labels else "")
            raise BertkitError(
                f"--model {model_name}: the checkpoint has {what}, but --task {task.name} needs {need}; "
                f"pass --new-head to re-initialise the head and keep only the encoder"
            )
    if not keep_head:
        weights = {k: v for k, v in weights.items() if not k.startswith(("classifier.", "qa_outputs."))}
    head_class = BertForTokenClassification if task.head == "token_classification" else BertForSequenceClassification
    model = head_class(cfg, num_labels=1 if task.kind == "regression" else len(labels))
    missing, unexpected = load_hf_state_dict(model, weights, source=str(directory))
    model.load_report = {"missing": missing, "unexpected": unexpected, "directory": str(directory), "kept_head": keep_head}
    model.tokenizer = model.bert.tokenizer = tokenizer
    model.labels = labels
    return model, tokenizer


# ---- data -----------------------------------------------------------------------------------
class Encoded:
    """Token ids of a list of examples, and their targets, ready to cut into batches."""

    def __init__(self, tokenizer, examples, task: Task, labels, max_len: int, chunk: int = 8192):
        self.ids: list[list[int]] = []
        self.segments: list[list[int]] = []
        self.truncated = 0
        pair = examples and examples[0].text_b is not None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TruncationWarning)
            for start in range(0, len(examples), chunk):
                part = examples[start : start + chunk]
                encs = tokenizer.encode_batch([e.text_a for e in part], [e.text_b for e in part] if pair else None, max_len=max_len)
                for e in encs:
                    self.ids.append(e.ids)
                    self.segments.append(e.segment_ids)
                    self.truncated += e.truncated
        self.lengths = np.array([len(i) for i in self.ids], dtype=np.int64)
        self.pad_id = tokenizer.pad_id
        if task.kind == "regression":
            self.targets = torch.tensor([float(e.label) for e in examples], dtype=torch.float32)
        else:
            index = {l: i for i, l in enumerate(labels)}
            self.targets = torch.tensor([index[e.label] for e in examples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows):
        width = int(self.lengths[rows].max())
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        segs = np.zeros((len(rows), width), dtype=np.int64)
        for r, i in enumerate(rows):
            ids[r, : self.lengths[i]] = self.ids[i]
            segs[r, : self.lengths[i]] = self.segments[i]
        return (torch.from_numpy(ids), torch.from_numpy(segs), torch.from_numpy(self.lengths[rows]), self.targets[rows])


def bucket_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, chunk_batches: int = 50) -> list[np.ndarray]:
    """Every row once: shuffle, sort within chunks of `chunk_batches` batches, cut into batches, shuffle
    the batches. `chunk_batches=1` gives plain random batches (consecutive slices of one permutation)."""
    order = rng.permutation(len(lengths))
    batches = []
    chunk = batch_size * chunk_batches
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# ---- evaluation -----------------------------------------------------------------------------
@torch.no_grad()
def predict_encoded(model, data: Encoded, batch_size: int = 128) -> np.ndarray:
    """Raw model outputs (logits, or regression scores) in the data's original order."""
    was_training = model.training
    model.eval()
    out = [None] * len(data)
    for rows in sorted_batches(data.lengths, batch_size):
        ids, segs, lens, _ = data.batch(rows)
        logits = model(ids, segs, lens).float().numpy()
        for r, i in enumerate(rows):
            out[i] = logits[r]
    model.train(was_training)
    return np.stack(out) if out else np.zeros((0, 1), dtype=np.float32)


def evaluate(model, data: Encoded, task: Task, batch_size: int = 128) -> dict[str, float]:
    logits = predict_encoded(model, data, batch_size)
    targets = data.targets.numpy()
    preds = logits[:, 0] if task.kind == "regression" else logits.argmax(-1)
    return compute_metrics(task.metric_set, targets, preds)


# ---- the loop -------------------------------------------------------------------------------
def _log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def finetune(task: str | Task, data_dir, model: str, out, config: FinetuneConfig | None = None,
             new_head: bool = False, regression: bool = False, task_options: dict | None = None,
             quiet: bool = False) -> dict:
    """Fine-tune `model` on `task`; writes the best epoch's checkpoint to `out`; returns eval results."""
    config = config or FinetuneConfig()
    config.check()
    wall_start = time.perf_counter()
    task = task if isinstance(task, Task) else get_task(task, regression=regression)
    data: TaskData = load_task_data(task, data_dir, **(task_options or {}))
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net, tokenizer = build_task_model(model, task, data.labels, new_head=new_head)

    train_examples = data.train
    if config.max_train_examples is not None and config.max_train_examples < len(train_examples):
        keep = np.sort(rng.permutation(len(train_examples))[: config.max_train_examples])
        train_examples = [train_examples[i] for i in keep]
    train = Encoded(tokenizer, train_examples, task, data.labels, config.max_len)
    devs = {name: Encoded(tokenizer, ex, task, data.labels, config.max_len) for name, ex in data.dev.items()}
    truncated = train.truncated + sum(d.truncated for d in devs.values())
    if truncated:
        _log(f"bertkit: note: {truncated} input(s) longer than --max-len {config.max_len} tokens were truncated", quiet)

    def loss_of(net, batch):
        ids, segs, lens, y = batch
        logits = net(ids, segs, lens)
        return F.mse_loss(logits[:, 0], y) if task.kind == "regression" else F.cross_entropy(logits, y)

    describe = (f"finetune {task.name}: {len(train)} training / " + ", ".join(f"{len(d)} {n}" for n, d in devs.items())
                + f" examples, {task.kind}" + (f" over labels {data.labels}" if data.labels else ""))
    best_epoch, best_results, epochs_log = train_epochs(
        net, train, devs, config, out, loss_of, lambda net, d: evaluate(net, d, task, config.eval_batch_size),
        task.main_metric, describe, rng, quiet)
    info = {"head": task.head, "task": task.name, "labels": data.labels, "max_len": config.max_len,
            "best_epoch": best_epoch, "dev": best_results, "hyperparameters": dataclasses.asdict(config), "base_model": str(model)}
    return write_run(net, tokenizer, out, info, task.name, model, task.main_metric, best_epoch, best_results, epochs_log,
                     len(train), {n: len(d) for n, d in devs.items()}, config, wall_start, quiet)


def train_epochs(net, train, devs: dict, config: FinetuneConfig, out, loss_of, evaluate_on, main_metric: str,
                 describe: str, rng: np.random.Generator, quiet: bool = False):
    """The fine-tuning loop shared by every task: epochs of length-bucketed batches, an optimizer
    step every `config.accumulate` batches, `out/metrics.jsonl` rows, the dev splits scored after
    each epoch. `train` has `lengths`, `len()` and `batch(rows)`; `loss_of(net, batch)` is the
    mean loss of a batch; `evaluate_on(net, split)` returns a dict of metrics (values are numbers,
    or dicts of numbers). `net` ends holding the best epoch's weights (by `main_metric` on the
    first dev split), in eval mode. Returns (best epoch, its metrics per split, every epoch's row).
    """
    from tqdm import tqdm

    batches_per_epoch = math.ceil(len(train) / config.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / config.accumulate)
    total_steps = steps_per_epoch * config.epochs
    warmup = warmup_steps_for(total_steps, config.warmup_ratio)
    optimizer = build_optimizer(net, config.optimizer, config.lr, config.weight_decay, config.epsilon)
    scheduler = linear_warmup_decay(optimizer, warmup, total_steps)
    main_split = next(iter(devs))
    _log(f"{describe}; {config.epochs} epoch(s) x {steps_per_epoch} steps of {config.batch_size * config.accumulate} examples", quiet)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics_file = open(out / "metrics.jsonl", "w", encoding="utf-8")

    def write(row):
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()

    def score(epoch, step, extra):
        t0 = time.perf_counter()
        results = {name: evaluate_on(net, d) for name, d in devs.items()}
        row = {"epoch": epoch, "step": step, **extra, "eval_seconds": round(time.perf_counter() - t0, 2)}
        for name, m in results.items():
            row.update(_flat(name, m))
        write(row)
        return results, row

    epochs_log = []
    best = None  # (value, epoch, results, state)
    if config.eval_before:
        results, row = score(0, 0, {})
        epochs_log.append(row)
        _log(f"epoch 0 (before training): {_fmt(results)}", quiet)
    step = 0
    net.train()
    try:
        for epoch in range(1, config.epochs + 1):
            batches = bucket_batches(train.lengths, config.batch_size, rng, config.bucket_batches)
            bar = tqdm(total=len(batches), desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not config.progress or quiet,
                       file=sys.stderr, dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
            t0 = time.perf_counter()
            epoch_loss, n_seen, log_loss, log_n, log_t = 0.0, 0, 0.0, 0, t0
            for i, rows in enumerate(batches):
                loss = loss_of(net, train.batch(rows))
                if not torch.isfinite(loss):
                    raise BertkitError(f"training diverged at epoch {epoch}, batch {i + 1} (loss {loss.item()}); try a lower --lr")
                (loss / config.accumulate).backward()
                epoch_loss += loss.item() * len(rows)
                n_seen += len(rows)
                log_loss += loss.item() * len(rows)
                log_n += len(rows)
                if (i + 1) % config.accumulate == 0 or i + 1 == len(batches):
                    apply_gradients(net.parameters(), optimizer, scheduler, config.max_grad_norm)
                    step += 1
                    if step % config.log_every == 0:
                        now = time.perf_counter()
                        write({"epoch": epoch, "step": step, "loss": round(log_loss / log_n, 6),
                               "lr": scheduler.get_last_lr()[0], "examples_per_s": round(log_n / (now - log_t), 2)})
                        log_loss, log_n, log_t = 0.0, 0, now
                bar.update(1)
                if i % 10 == 0:
                    bar.set_postfix(loss=f"{epoch_loss / n_seen:.4f}", refresh=False)
            bar.close()
            train_seconds = time.perf_counter() - t0
            results, row = score(epoch, step, {"train_loss": round(epoch_loss / n_seen, 6), "train_seconds": round(train_seconds, 2),
                                               "train_examples_per_s": round(n_seen / train_seconds, 2)})
            epochs_log.append(row)
            value = results[main_split][main_metric]
            _log(f"epoch {epoch}/{config.epochs}: train loss {epoch_loss / n_seen:.4f}, {train_seconds:.0f}s; {_fmt(results)}", quiet)
            if best is None or value > best[0]:
                state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                best = (value, epoch, results, state)
    finally:
        metrics_file.close()

    _, best_epoch, best_results, state = best
    net.load_state_dict(state)
    net.eval()
    return best_epoch, best_results, epochs_log


def write_run(net, tokenizer, out, info: dict, task_name: str, model, main_metric: str, best_epoch: int, best_results: dict,
              epochs_log: list, train_examples: int, dev_examples: dict, config: FinetuneConfig, wall_start: float,
              quiet: bool = False) -> dict:
    """Save the trained checkpoint (with `info` as bertkit.json) and `out/eval_results.json`; returns the results."""
    from ..checkpoint import save

    out = Path(out)
    save(net, out, tokenizer, info=info)
    train_times = [r["train_seconds"] for r in epochs_log if "train_seconds" in r]
    results = {
        "task": task_name,
        "model": str(model),
        "best_epoch": best_epoch,
        "main_metric": main_metric,
        **best_results,
        "train_examples": train_examples,
        "dev_examples": dev_examples,
        "epochs": epochs_log,
        "train_seconds_per_epoch": train_times,
        "wall_seconds": round(time.perf_counter() - wall_start, 2),
        "hyperparameters": dataclasses.asdict(config),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": _peak_rss_mb(),
    }
    (out / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    _log(f"best epoch {best_epoch}: {_fmt(best_results)}; saved to {out}", quiet)
    net.tokenizer = tokenizer
    return results


def _peak_rss_mb() -> float | None:
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    except (ImportError, OSError):
        return None


def _flat(prefix: str, metrics: dict) -> dict:
    """{"dev_f1": ..., "dev_per_type_PER_f1": ...}: a metrics.jsonl row's keys for nested metrics."""
    row = {}
    for k, v in metrics.items():
        row.update(_flat(f"{prefix}_{k}", v) if isinstance(v, dict) else {f"{prefix}_{k}": round(v, 6)})
    return row


def _fmt(results: dict) -> str:
    """The log line's metrics: the top-level numbers of each split (nested breakdowns stay in the files)."""
    return "; ".join(f"{split} " + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if not isinstance(v, dict))
                     for split, m in results.items())
