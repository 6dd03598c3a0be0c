"""The BERT pretraining loop: masked LM + next-sentence prediction, one or many processes.

Loss = MLM cross-entropy averaged over the real masked positions of the *global* batch + NSP
cross-entropy averaged over its rows. Normalising by global counts (not per rank or per micro-batch)
is what makes N processes x batch b, 1 process x batch N*b, and 1 process x b x N accumulation
steps compute the same gradient.

Every global batch is formed the same way whatever the world size: each rank runs the loader as a
single process would (deterministic in seed and epoch; it reads every shard either way) and takes
its own rows, micro-batch m of rank r being rows [(m * world + r) * b, ... + b) of the global batch.
"""

from __future__ import annotations

import contextlib
from itertools import islice
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ..checkpoint import load as load_checkpoint
from ..config import BertConfig
from ..data.loader import PretrainingLoader
from ..errors import BertkitError
from ..model import BertForPreTraining, flops_per_token
from ..tokenizer import BertTokenizer
from . import distributed
from .checkpoints import find_resumable, list_checkpoints, rng_state, set_rng_state, write_checkpoint
from .metrics_log import MetricsLog, plot_metrics
from .optim import apply_gradients, build_optimizer, linear_warmup_decay, warmup_steps_for

@dataclass
class PretrainOptions:
    data: str
    out: str
    config: str | None = None  # a named shape (random init) ...
    model: str | None = None  # ... or a checkpoint to continue from
    steps: int = 1000
    batch_size: int = 32  # global: all ranks and accumulation steps together
    accumulate: int = 1
    lr: float = 1e-4
    warmup_ratio: float = 0.01
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    epsilon: float = 1e-6
    max_grad_norm: float = 1.0
    seed: int = 0
    ckpt_interval: int = 500
    keep_checkpoints: int = 3
    eval_data: str | None = None
    eval_interval: int = 500
    eval_batches: int | None = None  # None: the whole eval set
    log_interval: int = 10
    resume: bool = False
    resume_or_start: bool = False
    dropout: float | None = None  # override the config's dropout (0 for exactness tests)
    plot: bool = False
    max_minutes: float | None = None  # stop (with a final checkpoint and eval) after this much wall time
    device: str | None = None
    progress: bool = True
    extra: dict = field(default_factory=dict)


def cpu_peak_flops() -> float | None:
    """A rough fp32 peak for this CPU: threads x clock x 32 FLOP/cycle (AVX2: two 8-wide FMA units)."""
    try:
        mhz = max(float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz"))
    except (OSError, ValueError):
        return None
    return torch.get_num_threads() * mhz * 1e6 * 32


def peak_flops(device: torch.device) -> float | None:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        # dense bf16 peaks from the vendors' datasheets
        for key, flops in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12)):
            if key in name:
                return flops
        return None
    return cpu_peak_flops()


def mlm_nsp_sums(model, batch: dict, autocast) -> dict[str, torch.Tensor]:
    """Summed (not averaged) losses and correct counts of one micro-batch."""
    with autocast:
        mlm_logits, nsp_logits = model(
            batch["input_ids"], batch["segment_ids"], batch["valid_lengths"],
            masked_positions=batch["masked_lm_positions"], masked_weights=batch["masked_lm_weights"],
        )
    weights = batch["masked_lm_weights"]
    labels = batch["masked_lm_ids"][weights > 0].long()
    mlm_ce = F.cross_entropy(mlm_logits.float(), labels, reduction="none")
    real_weights = weights[weights > 0].float()
    nsp_labels = batch["next_sentence_labels"].long()
    return {
        "mlm_sum": (mlm_ce * real_weights).sum(),
        "nsp_sum": F.cross_entropy(nsp_logits.float(), nsp_labels, reduction="sum"),
        "mlm_correct": ((mlm_logits.argmax(-1) == labels).float() * real_weights).sum().detach(),
        "nsp_correct": (nsp_logits.argmax(-1) == nsp_labels).sum().float().detach(),
    }


def micro_batches(global_batch: dict, ctx: distributed.DistributedContext, accumulate: int) -> list[dict]:
    """This rank's `accumulate` slices of a global batch, each trimmed to its longest row."""
    rows = global_batch["input_ids"].shape[0]
    per = rows // (ctx.world_size * accumulate)
    out = []
    for m in range(accumulate):
        start = (m * ctx.world_size + ctx.rank) * per
        part = {k: v[start : start + per] for k, v in global_batch.items()}
        width = int(part["valid_lengths"].max())
        part["input_ids"], part["segment_ids"] = part["input_ids"][:, :width], part["segment_ids"][:, :width]
        out.append({k: v.to(ctx.device, non_blocking=True) for k, v in part.items()})
    return out


@torch.no_grad()
def evaluate(model, data: PretrainingLoader, ctx: distributed.DistributedContext | None = None,
             max_batches: int | None = None, autocast=None) -> dict:
    """MLM accuracy / loss / perplexity and NSP accuracy over held-out shards, shared across ranks
    (one process on the CPU, in fp32, unless told otherwise)."""
    ctx = ctx or distributed.DistributedContext()
    autocast = autocast or contextlib.nullcontext()
    was_training = model.training
    model.eval()
    totals = torch.zeros(5, dtype=torch.float64)  # mlm_sum, nsp_sum, mlm_correct, nsp_correct, masked
    rows = 0
    for i, batch in enumerate(data.iter_epoch(0)):
        if max_batches is not None and i >= max_batches:
            break
        if batch["input_ids"].shape[0] < ctx.world_size:  # a last batch too small to share
            continue
        (part,) = micro_batches(batch, ctx, 1)
        s = mlm_nsp_sums(model, part, autocast)
        totals += torch.stack([s["mlm_sum"], s["nsp_sum"], s["mlm_correct"], s["nsp_correct"],
                               part["masked_lm_weights"].sum()]).double().cpu()
        rows += part["input_ids"].shape[0]
    totals = torch.cat([totals, torch.tensor([float(rows)], dtype=torch.float64)])
    totals = ctx.all_reduce_sum(totals.to(ctx.device)).cpu()
    mlm_sum, nsp_sum, mlm_correct, nsp_correct, masked, rows = totals.tolist()
    model.train(was_training)
    if masked == 0 or rows == 0:
        raise BertkitError("eval data: no instances to evaluate")
    mlm_loss = mlm_sum / masked
    return {
        "eval_mlm_loss": mlm_loss,
        "eval_mlm_accuracy": mlm_correct / masked,
        "eval_mlm_perplexity": math.exp(min(mlm_loss, 50.0)),
        "eval_nsp_loss": nsp_sum / rows,
        "eval_nsp_accuracy": nsp_correct / rows,
        "eval_instances": int(rows),
    }


def build_model(opts: PretrainOptions, data: PretrainingLoader) -> tuple[BertForPreTraining, BertTokenizer]:
    if opts.model:
        model = load_checkpoint(opts.model, head="pretraining")
        tokenizer = model.tokenizer
        if opts.dropout is not None:
            _set_dropout(model, opts.dropout)
    else:
        overrides = {} if opts.dropout is None else {"hidden_dropout_prob": opts.dropout, "attention_probs_dropout_prob": opts.dropout}
        cfg = BertConfig.from_preset(opts.config or "bert_4_256_4", vocab_size=data.vocab_size, **overrides)
        if (data.max_seq_length or 0) > cfg.max_position_embeddings:
            raise BertkitError(f"{opts.data}: sequences of {data.max_seq_length} exceed the model's {cfg.max_position_embeddings} positions")
        model = BertForPreTraining(cfg)
        tokenizer = data.tokenizer()
    if model.config.vocab_size != data.vocab_size:
        raise BertkitError(
            f"{opts.data}: shards were made with a vocabulary of {data.vocab_size} tokens, "
            f"the model has {model.config.vocab_size}"
        )
    return model, tokenizer


def _set_dropout(model: torch.nn.Module, p: float) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        if hasattr(m, "attn_dropout"):
            m.attn_dropout = p


def pretrain(opts: PretrainOptions) -> Path:
    ctx = distributed.setup(opts.device)
    try:
        return _pretrain(opts, ctx)
    finally:
        ctx.close()


def _pretrain(opts: PretrainOptions, ctx: distributed.DistributedContext) -> Path:
    out = Path(opts.out)
    per_step = ctx.world_size * opts.accumulate
    if opts.batch_size % per_step:
        raise BertkitError(
            f"--batch-size {opts.batch_size} is not divisible by {ctx.world_size} process(es) x "
            f"--accumulate {opts.accumulate}"
        )
    if opts.steps < 1:
        raise BertkitError(f"--steps must be at least 1, got {opts.steps}")
    data = PretrainingLoader(opts.data, opts.batch_size, seed=opts.seed, drop_last=True)
    eval_data = PretrainingLoader(opts.eval_data, opts.batch_size, shuffle=False, seed=opts.seed) if opts.eval_data else None
    if len(data) == 0:
        raise BertkitError(f"{opts.data}: {data.num_instances} instances are fewer than one batch of {opts.batch_size}")

    resumable = None
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if opts.resume or opts.resume_or_start:
        resumable = find_resumable(out)
        if ctx.is_main:
            for path, why in (resumable.skipped if resumable else []):
                print(f"bertkit: note: {path.name} cannot be resumed from: {why}")
        if resumable is None:
            broken = list_checkpoints(out)
            if not opts.resume_or_start:
                what = "no complete checkpoint" if broken else "no checkpoint"
                raise BertkitError(f"--resume: {out} holds {what} to resume from (use --resume-or-start to start fresh)")
        elif ctx.is_main:
            print(f"bertkit: resuming from {resumable.path} (step {resumable.step})")
    elif list_checkpoints(out):
        raise BertkitError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")

    torch.manual_seed(opts.seed)  # the same initial weights on every rank
    model, tokenizer = build_model(opts, data)
    model.to(ctx.device).train()
    optimizer = build_optimizer(model, opts.optimizer, lr=opts.lr, weight_decay=opts.weight_decay, epsilon=opts.epsilon)
    scheduler = linear_warmup_decay(optimizer, warmup_steps_for(opts.steps, opts.warmup_ratio), opts.steps)
    step, epoch, batch_in_epoch = 0, 0, 0
    if resumable is not None:
        weights = load_checkpoint(resumable.path, head="pretraining")
        model.load_state_dict(weights.state_dict())
        del weights
        optimizer.load_state_dict(resumable.state["optimizer"])
        scheduler.load_state_dict(resumable.state["scheduler"])
        step, epoch, batch_in_epoch = resumable.step, resumable.state["epoch"], resumable.state["batch_in_epoch"]
        set_rng_state(resumable.state["rng"])
    ddp_model = DDP(model) if ctx.enabled else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if ctx.device.type == "cuda" else contextlib.nullcontext()
    log = MetricsLog(out, resume_step=step if resumable else None) if ctx.is_main else None
    info = {"task": "pretraining", "data": str(opts.data), "options": {k: v for k, v in asdict(opts).items() if k != "extra"}}
    peak = peak_flops(ctx.device)
    if ctx.is_main:
        (out / "options.json").write_text(json.dumps(info["options"], indent=2) + "\n")

    def save_checkpoint():
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise BertkitError(f"weights became non-finite at step {step}: training diverged; " + last_good()
                               + " (try a lower --lr or a longer warmup)")
        if ctx.is_main:
            state = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "rng": rng_state(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
            write_checkpoint(out, step, model, tokenizer, state, info, keep=opts.keep_checkpoints)
        ctx.barrier()

    def last_good() -> str:
        kept = list_checkpoints(out)
        return f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was written yet"

    def run_eval():
        if eval_data is None:
            return {}
        return evaluate(ddp_model, eval_data, ctx, opts.eval_batches, autocast)

    bar = tqdm(total=opts.steps, initial=step, desc="pretraining", unit="step", disable=not (ctx.is_main and opts.progress), dynamic_ncols=True)
    batches = islice(data.iter_epoch(epoch), batch_in_epoch, None)
    window_start, window_tokens = time.perf_counter(), 0
    last_eval = None
    deadline = time.perf_counter() + 60 * opts.max_minutes if opts.max_minutes else None
    stop_at = opts.steps
    while step < stop_at:
        global_batch = next(batches, None)
        if global_batch is None:  # end of an epoch: reshuffle and go on
            epoch, batch_in_epoch = epoch + 1, 0
            batches = data.iter_epoch(epoch)
            continue
        batch_in_epoch += 1
        parts = micro_batches(global_batch, ctx, opts.accumulate)
        global_masked = float(global_batch["masked_lm_weights"].sum())
        global_rows = float(opts.batch_size)
        sums = torch.zeros(4, dtype=torch.float64)
        for m, part in enumerate(parts):
            sync = contextlib.nullcontext() if (m == len(parts) - 1 or not ctx.enabled) else ddp_model.no_sync()
            with sync:
                s = mlm_nsp_sums(ddp_model, part, autocast)
                # x world size: DDP averages gradients over ranks, and we want the global sum / count.
                loss = (s["mlm_sum"] / global_masked + s["nsp_sum"] / global_rows) * ctx.world_size
                loss.backward()
            sums += torch.stack([s["mlm_sum"].detach(), s["nsp_sum"].detach(), s["mlm_correct"], s["nsp_correct"]]).double().cpu()
            window_tokens += int(part["valid_lengths"].sum()) * ctx.world_size
        sums = ctx.all_reduce_sum(sums.to(ctx.device)).cpu()
        mlm_loss, nsp_loss = sums[0].item() / global_masked, sums[1].item() / global_rows
        if not math.isfinite(mlm_loss + nsp_loss):
            raise BertkitError(f"loss became {mlm_loss + nsp_loss} at step {step + 1}: training diverged; "
                               + last_good() + " (try a lower --lr or a longer warmup)")
        apply_gradients(model.parameters(), optimizer, scheduler, opts.max_grad_norm)
        step += 1
        bar.update(1)
        if deadline is not None and step < stop_at:
            # every rank must stop at the same step: rank 0's clock decides
            out_of_time = ctx.broadcast_object(time.perf_counter() > deadline)
            if out_of_time:
                stop_at = step
                if ctx.is_main:
                    print(f"bertkit: note: --max-minutes {opts.max_minutes} reached at step {step}")

        row = None
        if step % opts.log_interval == 0 or step == stop_at:
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_tokens / max(elapsed, 1e-9)
            seqlen = float(global_batch["valid_lengths"].float().mean())
            mfu = tokens_per_s * flops_per_token(model.config, int(seqlen)) / (peak * ctx.world_size) if peak else None
            row = {"step": step, "loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
                   "mlm_accuracy": sums[2].item() / global_masked, "nsp_accuracy": sums[3].item() / global_rows,
                   "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s, "epoch": epoch}
            if mfu is not None:
                row["mfu"] = mfu
            bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{tokens_per_s:,.0f}", mfu=f"{100 * mfu:.1f}%" if mfu else "?")
            window_start, window_tokens = time.perf_counter(), 0
        if eval_data is not None and (step % opts.eval_interval == 0 or step == stop_at):
            last_eval = run_eval()
            row = {**(row or {"step": step}), **last_eval}
        if row is not None and log is not None:
            log.write(row)
        if step % opts.ckpt_interval == 0 or step == stop_at:
            save_checkpoint()
    bar.close()

    final = out / "final"
    if ctx.is_main:
        from ..checkpoint import save

        save(model, final, tokenizer, info={**info, "step": step, **({"eval": last_eval} if last_eval else {})})
        log.close()
        if opts.plot:
            png = plot_metrics(out / "metrics.jsonl", out / "loss.png")
            if png is None:
                print("bertkit: note: --plot needs matplotlib: pip install matplotlib")
    ctx.barrier()
    return final


__all__ = ["PretrainOptions", "pretrain", "evaluate"]
