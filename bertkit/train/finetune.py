"""Fine-tuning a BERT checkpoint on a classification or regression task.

    from bertkit.train.finetune import FinetuneConfig, finetune
    results = finetune("mrpc", "glue_data/MRPC", "all-minilm-l6-v2", "out/mrpc", FinetuneConfig(epochs=3))

The pooled [CLS] vector feeds a fresh linear head (cross-entropy for classification, mean squared
error for regression). Batches are drawn at random each epoch (bertkit/batches.py: `bucket_batches`
N > 1 sorts groups of N batches by length, `max_tokens` cuts batches by a token budget instead of a
row count). After each epoch the dev set is scored with the task's metrics; the weights of the best
epoch (by the task's main metric on its first dev split) are what `out` holds at the end, as a
checkpoint directory that bertkit and transformers load, with `eval_results.json` and
`metrics.jsonl` beside it. The training itself is the one loop (loop.py): `--device`,
`--precision`, torchrun's processes, `--resume` and `--ckpt-interval` work the same for every task.
`RowsJob` and `run_finetune` are shared with token classification (tagging/train.py) and SQuAD
(qa/train.py), which bring their own data, loss and metric.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..batches import pad_rows, random_batches, sorted_batches, split_rows, token_budget_batches
from ..device import evaluating, model_device, peak_rss_mb, to_device
from ..errors import BertkitError
from ..tasks.metrics import compute_metrics
from ..tasks.readers import Task, TaskData, get_task, load_task_data
from ..tokenizer import TruncationWarning
from . import distributed
from .checkpoints import remove_checkpoints, write_checkpoint
from .config import TrainConfig
from .loop import TrainingJob, format_results, run_training, say


@dataclass
class FinetuneConfig(TrainConfig):
    max_len: int = 128  # tokens per example, [CLS] and [SEP] included

    def check(self) -> None:
        super().check()
        if self.max_len < 3:
            raise BertkitError(f"--max-len must be at least 3, got {self.max_len}")


# ---- model ----------------------------------------------------------------------------------
def build_task_model(model_name: str, task: Task, labels: list[str] | None, new_head: bool = False):
    """A BertForSequenceClassification (or, for a tagging task, BertForTokenClassification) for
    `task` from a checkpoint, with the checkpoint's tokenizer.

    An encoder or pretraining checkpoint gets a fresh head. A checkpoint that already has a task
    head keeps it when it is for the same task and labels; otherwise it is refused, unless
    `new_head` (then the head is re-initialised and only the encoder is kept).
    """
    from ..checkpoint import load_config, load_hf_state_dict, read_bertkit_info, read_weights, saved_head, saved_labels
    from ..pretrained import resolve
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


# ---- data ---------------------------------------------------------------------------------------
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
        ids = pad_rows([self.ids[i] for i in rows], self.pad_id)
        segs = pad_rows([self.segments[i] for i in rows])
        return (torch.from_numpy(ids), torch.from_numpy(segs), torch.from_numpy(self.lengths[rows]), self.targets[rows])


# ---- evaluation -----------------------------------------------------------------------------
def predict_encoded(model, data: Encoded, batch_size: int = 128) -> np.ndarray:
    """Raw model outputs (logits, or regression scores) in the data's original order."""
    with evaluating(model):
        device = model_device(model)
        out = [None] * len(data)
        for rows in sorted_batches(data.lengths, batch_size):
            ids, segs, lens, _ = to_device(data.batch(rows), device)
            logits = model(ids, segs, lens).float().cpu().numpy()
            for r, i in enumerate(rows):
                out[i] = logits[r]
    return np.stack(out) if out else np.zeros((0, 1), dtype=np.float32)


def evaluate(model, data: Encoded, task: Task, batch_size: int = 128) -> dict[str, float]:
    logits = predict_encoded(model, data, batch_size)
    targets = data.targets.numpy()
    preds = logits[:, 0] if task.kind == "regression" else logits.argmax(-1)
    return compute_metrics(task.metric_set, targets, preds)


# ---- the job ------------------------------------------------------------------------------------
class RowsJob(TrainingJob):
    """A fine-tuning job over examples that cut into padded batches by row (`data.lengths`,
    `data.batch(rows)` -> a tuple whose third item is the valid lengths): random batches of
    `batch_size` x `accumulate` rows (or of a token budget) per optimizer step, drawn from
    (seed, epoch), split evenly over the processes. `loss_sums(model, batch)` returns {"loss": sum
    over the batch}, normalised by `count_key` ("rows", or a count `counts_of(batch)` gives)."""

    def __init__(self, identity: str, data, config, loss_sums: Callable, evaluate: Callable | None, main_metric: str | None,
                 tokenizer, info: dict, count_key: str = "rows", counts_of: Callable | None = None):
        self.identity, self.data, self.config, self.tokenizer, self.info = identity, data, config, tokenizer, info
        self._loss_sums, self._evaluate, self._counts_of = loss_sums, evaluate, counts_of
        self.main_metric = main_metric
        self.loss_terms = {"loss": count_key}
        if config.max_tokens is not None and len(data) and int(data.lengths.max()) > config.max_tokens:
            raise BertkitError(f"--max-tokens {config.max_tokens} is smaller than the longest training example "
                               f"({int(data.lengths.max())} tokens after --max-len); raise it to at least that")

    def epoch_batches(self, epoch: int, start: int = 0):
        rng = np.random.default_rng([self.config.seed, epoch])
        if self.config.max_tokens is not None:
            batches = token_budget_batches(self.data.lengths, self.config.max_tokens * self.config.accumulate, rng)
        else:
            batches = random_batches(self.data.lengths, self.config.batch_size * self.config.accumulate, rng,
                                     self.config.bucket_batches)
        return batches[start:]

    def steps_per_epoch(self, epoch: int) -> int:
        return len(self.epoch_batches(epoch))

    def micro_batches(self, rows, ctx, accumulate: int):
        return [self.data.batch(part) if len(part) else None for part in split_rows(rows, ctx.rank, ctx.world_size, accumulate)]

    def counts(self, batch) -> dict[str, float]:
        counts = {"rows": float(len(batch[2])), "tokens": float(batch[2].sum())}
        if self._counts_of is not None:
            counts.update(self._counts_of(batch))
        return counts

    def loss_sums(self, model, batch):
        return self._loss_sums(model, batch)

    def evaluate(self, model):
        return None if self._evaluate is None else self._evaluate(model)

    def save_checkpoint(self, model, out: Path, step: int, state: dict, keep: int) -> None:
        write_checkpoint(out, step, model, self.tokenizer, state, {**self.info, "resumable": True}, keep=keep)


def run_finetune(job: RowsJob, net, out, config, describe: str, ctx, quiet: bool, checkpoints: bool = True):
    """Say what is about to happen, then train `job` with the one loop; returns the loop's result.
    `checkpoints=False`: no resumable checkpoints (for a model bertkit cannot save, e.g. a reference
    implementation's)."""
    steps = [job.steps_per_epoch(e) for e in range(1, config.epochs + 1)]
    batch = f"{config.max_tokens * config.accumulate} tokens" if config.max_tokens else f"{config.batch_size * config.accumulate} examples"
    total = config.max_steps or sum(steps)
    length = f"{total} steps ({total / steps[0]:.2f} epochs)" if config.max_steps else f"{config.epochs} epoch(s) x {steps[0]} steps"
    say(f"{describe}; {length} of {batch}"
        + (f" on {ctx.world_size} processes" if ctx.enabled else "") + f", {ctx.device}, {config.precision}", ctx, quiet)
    options = config.loop_options(quiet)
    if not checkpoints:
        options = dataclasses.replace(options, ckpt_interval=0, ckpt_at_epoch_end=False, ckpt_at_end=False)
    return run_training(job, net, ctx, out, total, config.optimizer_spec(), options)


def write_results(job: RowsJob, net, out, config, result, ctx, quiet: bool, train_examples: int, dev_examples: dict,
                  wall_start: float) -> dict:
    """Rank 0 saves the best epoch's checkpoint and eval_results.json to `out` and drops the
    resumable checkpoints (the run is finished); every rank returns the results."""
    results = None
    if ctx.is_main:
        from ..checkpoint import save

        out = Path(out)
        save(net, out, job.tokenizer, info={**job.info, "best_epoch": result.best_epoch, "dev": result.best_results})
        remove_checkpoints(out)
        results = {"task": job.info["task"], "model": job.info["base_model"], "best_epoch": result.best_epoch,
                   "main_metric": job.main_metric, **(result.best_results or {}), "train_examples": train_examples,
                   "dev_examples": dev_examples, "epochs": result.epochs,
                   "train_seconds_per_epoch": [r["train_seconds"] for r in result.epochs if "train_seconds" in r],
                   "wall_seconds": round(time.perf_counter() - wall_start, 2), "hyperparameters": dataclasses.asdict(config),
                   "processes": ctx.world_size, "device": str(ctx.device), "torch_threads": torch.get_num_threads(),
                   "peak_rss_mb": peak_rss_mb(), **({"resumed_from": result.resumed_from} if result.resumed_from else {})}
        (out / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
        say(f"best epoch {result.best_epoch}: {format_results(result.best_results or {})}; saved to {out}", ctx, quiet)
    return ctx.broadcast_object(results)


def finetune(task: str | Task, data_dir, model: str, out, config: FinetuneConfig | None = None,
             new_head: bool = False, regression: bool = False, task_options: dict | None = None,
             quiet: bool = False) -> dict:
    """Fine-tune `model` on `task`; writes the best epoch's checkpoint to `out`; returns eval results
    (on every process of a torchrun job; only rank 0 writes files)."""
    config = config or FinetuneConfig()
    config.check()
    with distributed.session(config.device) as ctx:
        return _finetune(task, data_dir, model, out, config, new_head, regression, task_options, quiet, ctx)


def _finetune(task, data_dir, model, out, config, new_head, regression, task_options, quiet, ctx) -> dict:
    wall_start = time.perf_counter()
    task = task if isinstance(task, Task) else get_task(task, regression=regression)
    data: TaskData = load_task_data(task, data_dir, **(task_options or {}))
    torch.manual_seed(config.seed)
    net, tokenizer = build_task_model(model, task, data.labels, new_head=new_head)

    train_examples = config.training_subset(data.train)
    train = Encoded(tokenizer, train_examples, task, data.labels, config.max_len)
    devs = {name: Encoded(tokenizer, ex, task, data.labels, config.max_len) for name, ex in data.dev.items()}
    truncated = train.truncated + sum(d.truncated for d in devs.values())
    if truncated:
        say(f"bertkit: note: {truncated} input(s) longer than --max-len {config.max_len} tokens were truncated", ctx, quiet)

    def loss_sums(net, batch):
        ids, segs, lens, y = batch
        logits = net(ids, segs, lens)
        if task.kind == "regression":
            return {"loss": F.mse_loss(logits[:, 0].float(), y, reduction="sum")}
        return {"loss": F.cross_entropy(logits.float(), y, reduction="sum")}

    info = {"head": task.head, "task": task.name, "labels": data.labels, "max_len": config.max_len,
            "hyperparameters": dataclasses.asdict(config), "base_model": str(model)}
    job = RowsJob(f"finetune {task.name}", train, config, loss_sums,
                  lambda net: {name: evaluate(net, d, task, config.eval_batch_size) for name, d in devs.items()},
                  task.main_metric, tokenizer, info)
    describe = (f"finetune {task.name}: {len(train)} training / " + ", ".join(f"{len(d)} {n}" for n, d in devs.items())
                + f" examples, {task.kind}" + (f" over labels {data.labels}" if data.labels else ""))
    result = run_finetune(job, net, out, config, describe, ctx, quiet)
    return write_results(job, net, out, config, result, ctx, quiet, len(train), {n: len(d) for n, d in devs.items()}, wall_start)
