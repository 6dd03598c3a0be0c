"""The one training loop: every bertkit job (classification, regression, tagging, SQuAD, pretraining).

A job brings only what differs (`TrainingJob`): its global batches per epoch, how to cut one into
this process's micro-batches, the summed loss terms of a micro-batch, its dev metric and how its
checkpoints are saved. `run_training` owns the rest, once:

- device placement and autocast (`--device`, `--precision`: bertkit/device.py), fp16's gradient scaler;
- data parallelism: DDP over torchrun's processes, `no_sync` on all but the last micro-batch;
- exact normalisation: each loss term is a sum divided by its count over the whole *global* batch
  (counted before the forward passes and all-reduced), so N processes, accumulation and one process
  with the whole batch compute the same gradient, whatever the padding or the number of real targets;
- clipping, the optimizer step and the schedule (optim.py); divergence checks;
- `metrics.jsonl` (`MetricsLog`), the progress bar, dev scoring (after each epoch and/or every N steps)
  and the best epoch;
- resumable checkpoints (checkpoints.py: weights, optimizer, scheduler, scaler, RNG states, the data
  position and the best epoch so far) every `ckpt_interval` steps and at epoch ends, and `--resume`,
  which ends with the same weights as a run that was never stopped: a job's batches are a function of
  (seed, epoch) alone, so the loop skips the batches of the epoch it had done.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ..device import autocast, needs_grad_scaler, resolve_precision, to_device
from ..errors import BertkitError
from .checkpoints import find_resumable, list_checkpoints, rng_state, set_rng_state
from .distributed import DistributedContext
from .metrics_log import MetricsLog, flat_metrics
from .optim import apply_gradients, build_optimizer, linear_warmup_decay, warmup_steps_for


@dataclass
class OptimizerSpec:
    name: str = "adamw"
    lr: float = 5e-5
    weight_decay: float = 0.01
    epsilon: float = 1e-6
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0  # 0: no clipping


@dataclass
class LoopOptions:
    """How the loop runs (the same flags on every training command)."""

    precision: str = "fp32"
    accumulate: int = 1  # micro-batches per optimizer step and process
    log_every: int = 50  # optimizer steps between metrics.jsonl rows
    eval_every: int = 0  # optimizer steps between dev scorings (0: only at epoch ends / the end)
    eval_at_epoch_end: bool = True
    eval_before: bool = False
    ckpt_interval: int = 0  # optimizer steps between resumable checkpoints (0: at epoch ends only)
    ckpt_at_epoch_end: bool = True
    ckpt_at_end: bool = True  # also when training ends (a job that saves its result right after may skip it)
    keep_checkpoints: int = 1
    resume: bool = False
    resume_or_start: bool = False
    resume_same_steps: bool = True  # --resume refuses a checkpoint of a run with another number of steps
    fresh_start_hint: str = "run without --resume to start afresh"  # said when --resume finds nothing
    max_minutes: float | None = None  # stop (with a checkpoint and a final scoring) after this much wall time
    tensorboard: bool = False  # also write TensorBoard events (when installed)
    progress: bool = True
    quiet: bool = False


class TrainingJob:
    """What a training job brings to the loop. Subclasses set `identity` and implement the methods
    marked as such; the others have defaults."""

    identity: str = "training"  # checkpoints record it; --resume refuses a checkpoint of another job
    loss_terms: dict[str, str] = {"loss": "rows"}  # summed loss term -> the count that normalises it
    main_metric: str | None = None  # higher is better; the best epoch's weights are kept (None: the last)
    stat_keys: tuple[str, ...] = ()  # statistics `loss_sums` also returns (summed, e.g. correct predictions)
    distributed_eval: bool = False  # every rank takes part in `evaluate` (else rank 0 scores alone)

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterable[Any]:
        """The global batches of `epoch` (1, 2, ...) from batch `start` on, a function of the seed and
        the epoch alone (so a resumed run skips what it had done)."""
        raise NotImplementedError

    def micro_batches(self, batch, ctx: DistributedContext, accumulate: int) -> list[Any]:
        """This rank's `accumulate` micro-batches of a global batch (None for an empty one), on the CPU."""
        raise NotImplementedError

    def counts(self, micro) -> dict[str, float]:
        """Numbers of a micro-batch known before the forward pass: "rows", "tokens" (real tokens) and
        every count a loss term is normalised by."""
        raise NotImplementedError

    def loss_sums(self, model, micro) -> dict[str, torch.Tensor]:
        """The summed loss terms of a micro-batch (scalars with a graph), and any statistics to sum."""
        raise NotImplementedError

    def step_metrics(self, totals: dict[str, float], seconds: float) -> dict:
        """Extra metrics.jsonl numbers for a logged step, from the summed statistics of the steps since the last row."""
        return {}

    def evaluate(self, model) -> dict | None:
        """Dev metrics ({split: {metric: value}} or flat {metric: value}); None when there is no dev data."""
        return None

    def score(self, results: dict) -> float:
        """The number the best epoch is chosen by (higher is better)."""
        first = next(iter(results.values()))
        return float(first[self.main_metric] if isinstance(first, dict) else results[self.main_metric])

    def save_checkpoint(self, model, out: Path, step: int, state: dict, keep: int) -> None:
        """Write a resumable checkpoint (checkpoints.write_checkpoint with the job's tokenizer and info)."""
        raise NotImplementedError


@dataclass
class TrainResult:
    step: int
    epochs: list[dict] = field(default_factory=list)  # one row per scoring, as in metrics.jsonl
    best_epoch: int | None = None
    best_results: dict | None = None
    last_results: dict | None = None
    resumed_from: str | None = None


def say(msg: str, ctx: DistributedContext | None = None, quiet: bool = False) -> None:
    """A log line on stderr, from rank 0 only (above a progress bar, if one is showing)."""
    if not quiet and (ctx is None or ctx.is_main):
        tqdm.write(msg, file=sys.stderr)


def run_training(job: TrainingJob, model: torch.nn.Module, ctx: DistributedContext, out: Path, total_steps: int,
                 optim: OptimizerSpec, opts: LoopOptions, before_training=None) -> TrainResult:
    """Train `model` in place for `total_steps` optimizer steps (epochs wrap as needed). With a main
    metric, `model` ends holding the best scoring's weights. `before_training()` runs once the
    checks that must fail before anything is written (resume, precision) have passed."""
    return _Run(job, model, ctx, Path(out), total_steps, optim, opts, before_training).train()


class _Run:
    """One `run_training` call: the training objects, and `state`, which a checkpoint saves."""

    def __init__(self, job, model, ctx, out: Path, total_steps: int, optim: OptimizerSpec, opts: LoopOptions, before_training):
        self.job, self.model, self.ctx, self.out, self.opts, self.optim = job, model, ctx, out, opts, optim
        self.total_steps = self.stop_at = total_steps
        precision = resolve_precision(opts.precision, ctx.device)
        resumable = _find_resume(out, opts, job, ctx)
        model.to(ctx.device).train()
        self.optimizer = build_optimizer(model, optim.name, optim.lr, optim.weight_decay, optim.epsilon)
        self.scheduler = linear_warmup_decay(self.optimizer, warmup_steps_for(total_steps, optim.warmup_ratio), total_steps)
        self.scaler = torch.amp.GradScaler(ctx.device.type) if needs_grad_scaler(precision) else None
        self.state = {"step": 0, "epoch": 1, "batch_in_epoch": 0, "history": [], "best": None}
        self.best_weights = None
        if resumable is not None:
            planned = resumable.state.get("total_steps", total_steps)
            if planned != total_steps and opts.resume_same_steps:
                raise BertkitError(f"--resume: {resumable.path} belongs to a run of {planned} steps, this one has "
                                   f"{total_steps}: resume with the flags of the first run (epochs, batch size, data)")
            self.best_weights = _restore(resumable, model, self.optimizer, self.scheduler, self.scaler, self.state)
            say(f"bertkit: resuming from {resumable.path} (step {resumable.step})", ctx)
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
        if before_training is not None:
            before_training()
        self.ddp = DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None) if ctx.enabled else model
        self.log = MetricsLog(out, resume_step=self.state["step"] if resumable else None,
                              tensorboard=opts.tensorboard) if ctx.is_main else None
        self.forward_context = autocast(ctx.device, precision)
        self.term_keys = list(job.loss_terms)
        self.count_keys = sorted({"rows", "tokens", *job.loss_terms.values()})
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.deadline = time.perf_counter() + 60 * opts.max_minutes if opts.max_minutes else None
        self.result = TrainResult(step=self.state["step"], resumed_from=str(resumable.path) if resumable else None)
        self.window = self._fresh_window()

    # ---- the loop ---------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        state, opts = self.state, self.opts
        if opts.eval_before and state["step"] == 0 and self.result.resumed_from is None:
            results = self.score({})
            if results is not None:
                say(f"before training: {format_results(results)}", self.ctx, opts.quiet)
        self.bar = tqdm(total=self.total_steps, initial=state["step"], desc="training", unit="step", file=sys.stderr,
                        dynamic_ncols=True, disable=not (self.ctx.is_main and opts.progress and not opts.quiet),
                        mininterval=1.0 if sys.stderr.isatty() else 30.0)
        try:
            while state["step"] < self.stop_at:
                finished_epoch = self.train_epoch()
                if state["step"] >= self.stop_at:
                    if opts.ckpt_at_end:
                        self.checkpoint()
                elif opts.ckpt_at_epoch_end and finished_epoch:
                    self.checkpoint()
        finally:
            self.bar.close()
            if self.log is not None:
                self.log.close()
        self.result.step, self.result.epochs = state["step"], state["history"]
        if state["best"] is not None:
            self.result.best_epoch, self.result.best_results = state["best"]["epoch"], state["best"]["results"]
            if self.best_weights is not None:
                self.model.load_state_dict(self.best_weights)
        self.model.eval()
        return self.result

    def train_epoch(self) -> bool:
        """The rest of the current epoch (from its first batch not yet done); True if it reached the
        epoch's end, False if training stopped before (the step budget or --max-minutes)."""
        state, opts = self.state, self.opts
        epoch, start = state["epoch"], time.perf_counter()
        skip = state["batch_in_epoch"]  # batches done before the checkpoint this run resumed from
        for i, batch in enumerate(self.job.epoch_batches(epoch, start=skip), start=skip):
            if state["step"] >= self.stop_at:
                if opts.eval_at_epoch_end:  # a step budget that ends inside an epoch: its last part is scored too
                    self.end_epoch(epoch, time.perf_counter() - start)
                return False
            self.step(batch)
            state["batch_in_epoch"] = i + 1
            if self.deadline is not None and state["step"] < self.stop_at and \
                    self.ctx.broadcast_object(time.perf_counter() > self.deadline):  # rank 0's clock decides
                self.stop_at = state["step"]
                say(f"bertkit: note: --max-minutes {opts.max_minutes} reached at step {self.stop_at}", self.ctx, opts.quiet)
            if opts.eval_every and (state["step"] % opts.eval_every == 0 or state["step"] == self.stop_at):
                self.score({})
            if opts.ckpt_interval and state["step"] % opts.ckpt_interval == 0 and state["step"] < self.stop_at:
                self.checkpoint()
        self.end_epoch(epoch, time.perf_counter() - start)
        return True

    def step(self, batch) -> None:
        """One optimizer step on one global batch, and its bookkeeping (metrics row, progress bar)."""
        state, window = self.state, self.window
        total, step_sums, step_loss = _train_step(self.job, self.ddp, self.params, batch, self.ctx, self.opts,
                                                  self.forward_context, self.scaler, self.count_keys, self.term_keys)
        if not math.isfinite(step_loss):
            raise BertkitError(f"training diverged at epoch {state['epoch']}, step {state['step'] + 1} (loss {step_loss}); "
                               + _last_good(self.out) + "; try a lower --lr or a longer warmup")
        apply_gradients(self.params, self.optimizer, self.scheduler, self.optim.max_grad_norm, self.scaler)
        state["step"] += 1
        state["epoch_loss"] = state.get("epoch_loss", 0.0) + step_loss * total["rows"]
        state["epoch_rows"] = state.get("epoch_rows", 0.0) + total["rows"]
        self.bar.update(1)
        for k, v in {**total, **step_sums}.items():
            window[k] = window.get(k, 0.0) + v
        window["steps"] += 1
        window["loss_sum"] += step_loss
        if state["step"] % self.opts.log_every == 0 or state["step"] == self.stop_at:
            self._log_window()
            self.window = self._fresh_window()

    def end_epoch(self, epoch: int, seconds: float) -> None:
        """Score the epoch (if the job scores at epoch ends), log it, move to the next epoch."""
        state = self.state
        rows = state.pop("epoch_rows", 0.0)
        extra = {"train_loss": round(state.pop("epoch_loss", 0.0) / max(rows, 1.0), 6),
                 "train_seconds": round(seconds, 2), "train_examples_per_s": round(rows / max(seconds, 1e-9), 2)}
        results = self.score(extra) if self.opts.eval_at_epoch_end else None
        say(f"epoch {epoch}: train loss {extra['train_loss']:.4f}, {seconds:.0f}s"
            + (f"; {format_results(results)}" if results else ""), self.ctx, self.opts.quiet)
        state["epoch"], state["batch_in_epoch"] = epoch + 1, 0

    # ---- scoring, logging, checkpoints -------------------------------------------------------------
    def score(self, extra: dict) -> dict | None:
        """Score the dev data (if the job has any), keep the best, and log a row with `extra` (an
        epoch's training numbers)."""
        job, ctx, state = self.job, self.ctx, self.state
        t0 = time.perf_counter()
        with self.forward_context:
            results = job.evaluate(self.model) if (job.distributed_eval or ctx.is_main) else None
        if not job.distributed_eval:
            results = ctx.broadcast_object(results)
        self.model.train()
        row = {"epoch": state["epoch"], "step": state["step"], **extra}
        if results is not None:
            results = json.loads(json.dumps(results, default=float))  # plain floats: checkpoints load with weights_only
            row.update({"eval_seconds": round(time.perf_counter() - t0, 2), **flat_metrics(results)})
            self.result.last_results = results
            if job.main_metric is not None:
                value = job.score(results)
                if state["best"] is None or value > state["best"]["value"]:
                    state["best"] = {"value": value, "epoch": state["epoch"], "step": state["step"], "results": results}
                    self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        if len(row) > 2:
            if self.log is not None:
                self.log.write(row)
            state["history"].append(row)
        return results

    def checkpoint(self) -> None:
        """A resumable checkpoint (rank 0 writes it; every rank waits for it)."""
        state = self.state
        if not all(bool(torch.isfinite(p).all()) for p in self.params):
            raise BertkitError(f"weights became non-finite at step {state['step']}: training diverged; "
                               + _last_good(self.out) + " (try a lower --lr or a longer warmup)")
        if self.ctx.is_main:
            saved = {**state, "rng": rng_state(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "job": self.job.identity, "total_steps": self.total_steps}
            if self.scaler is not None:
                saved["scaler"] = self.scaler.state_dict()
            best_is_current = state["best"] is not None and state["best"]["step"] == state["step"]
            if self.best_weights is not None and not best_is_current:
                saved["best_weights"] = self.best_weights
            self.job.save_checkpoint(self.model, self.out, state["step"], saved, self.opts.keep_checkpoints)
        self.ctx.barrier()

    def _fresh_window(self) -> dict:
        """Sums over the steps since the last metrics.jsonl row."""
        return {"t": time.perf_counter(), "steps": 0, "loss_sum": 0.0, **{k: 0.0 for k in self.count_keys}}

    def _log_window(self) -> None:
        """One metrics.jsonl row for the steps since the last one."""
        window, job = self.window, self.job
        seconds = max(time.perf_counter() - window["t"], 1e-9)
        row = {"epoch": self.state["epoch"], "step": self.state["step"],
               "loss": round(window["loss_sum"] / max(window["steps"], 1), 6)}
        if self.term_keys != ["loss"]:  # named terms (mlm_loss, nsp_loss) get a column each
            for t in self.term_keys:
                row[t] = round(window.get(t, 0.0) / max(window[job.loss_terms[t]], 1e-12), 6)
        row.update(job.step_metrics(window, seconds))
        row.update({"lr": self.scheduler.get_last_lr()[0], "examples_per_s": round(window["rows"] / seconds, 2),
                    "tokens_per_s": round(window["tokens"] / seconds, 1)})
        if self.log is not None:
            self.log.write(row)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:,.0f}", refresh=False)


def _train_step(job, ddp, params, batch, ctx, opts, forward_context, scaler, count_keys, term_keys):
    """Forward and backward over this rank's micro-batches of one global batch (no optimizer step).
    Returns the global counts, the global sums of the loss terms and statistics, and the loss."""
    device = ctx.device
    parts = job.micro_batches(batch, ctx, opts.accumulate)
    counts = torch.zeros(len(count_keys), dtype=torch.float64)
    for part in parts:
        if part is not None:
            c = job.counts(part)
            counts += torch.tensor([float(c.get(k, 0.0)) for k in count_keys], dtype=torch.float64)
    total = dict(zip(count_keys, ctx.all_reduce_sum(counts.to(device)).cpu().tolist()))
    sums: dict[str, torch.Tensor] = {}
    for m, part in enumerate(parts):
        sync = ddp.no_sync() if ctx.enabled and m < len(parts) - 1 else contextlib.nullcontext()
        with sync:
            if part is None:  # no rows for this rank: a zero gradient keeps DDP's collectives in step
                loss = sum(p.reshape(-1)[0] for p in params) * 0.0
                terms = {}
            else:
                with forward_context:
                    terms = job.loss_sums(ddp, to_device(part, device))
                # x world size: DDP averages gradients over ranks; the loss wants the global sum / count
                loss = sum(terms[t].float() / max(total[job.loss_terms[t]], 1e-12) for t in term_keys) * ctx.world_size
            (scaler.scale(loss) if scaler is not None else loss).backward()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.detach().double().cpu()
    keys = sorted(set(job.loss_terms) | set(job.stat_keys))
    vector = torch.tensor([float(sums.get(k, 0.0)) for k in keys], dtype=torch.float64)
    step_sums = dict(zip(keys, ctx.all_reduce_sum(vector.to(device)).cpu().tolist()))
    step_loss = sum(step_sums[t] / max(total[job.loss_terms[t]], 1e-12) for t in term_keys)
    return total, step_sums, step_loss


def _find_resume(out: Path, opts: LoopOptions, job: TrainingJob, ctx: DistributedContext):
    """The checkpoint to resume from (or None), after the checks that must fail before anything is written."""
    if not (opts.resume or opts.resume_or_start):
        if list_checkpoints(out):
            raise BertkitError(f"{out} already holds checkpoints of an unfinished run: pass --resume to continue it, "
                               "or choose another --out")
        return None
    resumable = find_resumable(out)
    for path, why in (resumable.skipped if resumable else []):
        say(f"bertkit: note: {path.name} cannot be resumed from: {why}", ctx)
    if resumable is None:
        if opts.resume_or_start:
            return None
        what = "no complete checkpoint" if list_checkpoints(out) else "no checkpoint"
        raise BertkitError(f"--resume: {out} holds {what} to resume from ({opts.fresh_start_hint})")
    found = resumable.state.get("job", "pretraining")
    if found != job.identity:
        raise BertkitError(f"--resume: {resumable.path} is a checkpoint of {found}, not of {job.identity}")
    return resumable


def _restore(resumable, model, optimizer, scheduler, scaler, state: dict):
    """Load a resumable checkpoint into the training objects; returns the best scoring's weights, if kept apart."""
    from safetensors.torch import load_file

    from ..checkpoint import load_hf_state_dict

    saved = resumable.state
    load_hf_state_dict(model, load_file(resumable.path / "model.safetensors"), source=str(resumable.path))
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if scaler is not None and "scaler" in saved:
        scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"])
    for key in ("step", "epoch", "batch_in_epoch", "history", "best", "epoch_loss", "epoch_rows"):
        if key in saved:
            state[key] = saved[key]
    if "job" not in saved:  # written by bertkit's pretraining before the one loop, which counted epochs from 0
        state["epoch"] += 1
    best = saved.get("best_weights")
    if best is None and state["best"] is not None:
        best = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return best


def _last_good(out: Path) -> str:
    kept = list_checkpoints(out)
    return f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was written yet"


def format_results(results: dict) -> str:
    """A log line's metrics: the top-level numbers of each split (nested breakdowns stay in the files)."""
    if results and not any(isinstance(v, dict) for v in results.values()):
        results = {"": results}
    return "; ".join((f"{split} " if split else "") + ", ".join(f"{k} {v:.4f}" for k, v in m.items()
                                                                if isinstance(v, (int, float)))
                     for split, m in results.items())


__all__ = ["LoopOptions", "OptimizerSpec", "TrainingJob", "TrainResult", "run_training", "say", "format_results"]
