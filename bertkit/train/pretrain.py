"""BERT pretraining: masked LM + next-sentence prediction, one or many processes, on the one loop.

Loss = MLM cross-entropy averaged over the real masked positions of the *global* batch + NSP
cross-entropy averaged over its rows. The loop (loop.py) normalises each term by its count over the
whole global batch, all-reduced before the forward passes, so N processes x batch b, 1 process x
batch N*b, and 1 process x b x N accumulation steps compute the same gradient.

Every global batch is formed the same way whatever the world size (data/loader.py: a batch plan
from the shards' lengths, seed and epoch alone); each rank reads only the rows of its own
micro-batches, micro-batch m of rank r being rows [(m * world + r) * b, ... + b) of the global batch,
so an N-process job reads about 1/N of the data per rank.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import BertConfig
from ..data.loader import PretrainingLoader
from ..device import evaluating
from ..errors import BertkitError
from ..model import BertForPreTraining, flops_per_token
from ..pretrained import load as load_checkpoint
from ..tokenizer import BertTokenizer
from . import distributed
from .checkpoints import write_checkpoint
from .config import JobConfig
from .loop import LoopOptions, TrainingJob, run_training, say
from .metrics_log import plot_metrics

@dataclass(kw_only=True)
class PretrainOptions(JobConfig):
    """`bertkit pretrain`'s options: JobConfig's (batches, optimizer, device, checkpoints) and these."""

    data: str
    out: str
    config: str | None = None  # a named shape (random init) ...
    shape: dict | None = None  # ... or an explicit one: {"layers", "hidden", "heads", "ffn"} (d2l's 2 x 128, FFN 256)
    model: str | None = None  # ... or a checkpoint to continue from
    steps: int = 1000
    lr: float = 1e-4
    warmup_ratio: float = 0.01
    ckpt_interval: int = 500
    keep_checkpoints: int = 3
    eval_data: str | None = None
    eval_interval: int = 500
    eval_batches: int | None = None  # None: the whole eval set
    eval_before: bool = False  # also score the eval data before the first step (the untrained network)
    log_interval: int = 10
    resume_or_start: bool = False
    dropout: float | None = None  # override the config's dropout (0 for exactness tests)
    plot: bool = False
    max_minutes: float | None = None  # stop (with a final checkpoint and eval) after this much wall time
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


def mlm_nsp_sums(model, batch: dict, nsp: bool = True) -> dict[str, torch.Tensor]:
    """Summed (not averaged) losses and correct counts of one micro-batch. Without `nsp` (shards of
    single segments) the NSP head is left out of the loss; it stays in the graph with weight 0, so
    that every parameter gets a gradient, as data-parallel training needs."""
    mlm_logits, nsp_logits = model(
        batch["input_ids"], batch["segment_ids"], batch["valid_lengths"],
        masked_positions=batch["masked_lm_positions"], masked_weights=batch["masked_lm_weights"],
    )
    weights = batch["masked_lm_weights"]
    labels = batch["masked_lm_ids"][weights > 0].long()
    mlm_ce = F.cross_entropy(mlm_logits.float(), labels, reduction="none")
    real_weights = weights[weights > 0].float()
    sums = {"mlm_loss": (mlm_ce * real_weights).sum(),
            "mlm_correct": ((mlm_logits.argmax(-1) == labels).float() * real_weights).sum().detach()}
    if not nsp:
        sums["mlm_loss"] = sums["mlm_loss"] + 0.0 * nsp_logits.float().sum()
        return sums
    nsp_labels = batch["next_sentence_labels"].long()
    sums["nsp_loss"] = F.cross_entropy(nsp_logits.float(), nsp_labels, reduction="sum")
    sums["nsp_correct"] = (nsp_logits.argmax(-1) == nsp_labels).sum().float().detach()
    return sums


def evaluate(model, data: PretrainingLoader, ctx: distributed.DistributedContext | None = None,
             max_batches: int | None = None) -> dict:
    """MLM accuracy / loss / perplexity and NSP accuracy over held-out shards, each rank scoring its
    share of every batch and the sums all-reduced."""
    ctx = ctx or distributed.DistributedContext()
    with evaluating(model):
        totals = torch.zeros(5, dtype=torch.float64)  # mlm_loss, nsp_loss, mlm_correct, nsp_correct, masked
        rows = 0
        for i, (part,) in enumerate(data.rank_batches(0, ctx.rank, ctx.world_size)):
            if max_batches is not None and i >= max_batches:
                break
            if len(part["valid_lengths"]) == 0:  # a last batch with fewer rows than ranks
                continue
            part = {k: v.to(ctx.device) for k, v in part.items()}
            s = mlm_nsp_sums(model, part, data.nsp)
            zero = torch.zeros((), device=ctx.device)
            totals += torch.stack([s["mlm_loss"], s.get("nsp_loss", zero), s["mlm_correct"], s.get("nsp_correct", zero),
                                   part["masked_lm_weights"].sum()]).double().cpu()
            rows += part["input_ids"].shape[0]
        totals = torch.cat([totals, torch.tensor([float(rows)], dtype=torch.float64)])
        totals = ctx.all_reduce_sum(totals.to(ctx.device)).cpu()
        mlm_sum, nsp_sum, mlm_correct, nsp_correct, masked, rows = totals.tolist()
    if masked == 0 or rows == 0:
        raise BertkitError("eval data: no instances to evaluate")
    mlm_loss = mlm_sum / masked
    scores = {"eval_mlm_loss": mlm_loss, "eval_mlm_accuracy": mlm_correct / masked,
              "eval_mlm_perplexity": math.exp(min(mlm_loss, 50.0))}
    if data.nsp:
        scores.update({"eval_nsp_loss": nsp_sum / rows, "eval_nsp_accuracy": nsp_correct / rows})
    return {**scores, "eval_instances": int(rows)}


def build_model(opts: PretrainOptions, data: PretrainingLoader) -> tuple[BertForPreTraining, BertTokenizer]:
    if opts.model:
        model = load_checkpoint(opts.model, head="pretraining")
        tokenizer = model.tokenizer
        if opts.dropout is not None:
            _set_dropout(model, opts.dropout)
    else:
        overrides = {} if opts.dropout is None else {"hidden_dropout_prob": opts.dropout, "attention_probs_dropout_prob": opts.dropout}
        if opts.shape:
            layers, hidden, heads = opts.shape["layers"], opts.shape["hidden"], opts.shape["heads"]
            if hidden % heads:
                raise BertkitError(f"--hidden {hidden} is not divisible by --heads {heads}")
            cfg = BertConfig(vocab_size=data.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                             intermediate_size=opts.shape.get("ffn") or 4 * hidden, **overrides)
        else:
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


MLM_ONLY = "masked-LM-only pretraining (--no-nsp shards)"  # the job identity of a run on --no-nsp shards


def shard_kind(nsp: bool) -> str:
    return "next-sentence pairs" if nsp else "--no-nsp single segments"


class PretrainingJob(TrainingJob):
    """Masked LM + NSP on shards: this rank's micro-batches of each global batch, straight from the loader."""

    identity = "pretraining"
    loss_terms = {"mlm_loss": "masked", "nsp_loss": "rows"}
    stat_keys = ("mlm_correct", "nsp_correct")
    distributed_eval = True

    def __init__(self, data: PretrainingLoader, eval_data: PretrainingLoader | None, opts, ctx, model, tokenizer, info: dict):
        self.data, self.eval_data, self.opts, self.ctx = data, eval_data, opts, ctx
        if not data.nsp:  # --no-nsp shards: the masked LM alone, and no NSP numbers in metrics.jsonl
            self.loss_terms, self.stat_keys = {"mlm_loss": "masked"}, ("mlm_correct",)
            self.identity = MLM_ONLY  # --resume refuses a checkpoint of the other kind, in one line
        self.model, self.tokenizer, self.info = model, tokenizer, info
        self.peak = peak_flops(ctx.device)

    def epoch_batches(self, epoch: int, start: int = 0):
        # the loop counts epochs from 1, the loader from 0
        return self.data.rank_batches(epoch - 1, self.ctx.rank, self.ctx.world_size, self.opts.accumulate, start=start)

    def micro_batches(self, batch, ctx, accumulate: int):
        return [part if len(part["valid_lengths"]) else None for part in batch]

    def counts(self, part) -> dict[str, float]:
        return {"rows": float(len(part["valid_lengths"])), "tokens": float(part["valid_lengths"].sum()),
                "masked": float(part["masked_lm_weights"].sum())}

    def loss_sums(self, model, part):
        return mlm_nsp_sums(model, part, self.data.nsp)

    def step_metrics(self, totals: dict, seconds: float) -> dict:
        row = {"mlm_accuracy": totals.get("mlm_correct", 0.0) / max(totals["masked"], 1e-12)}
        if self.data.nsp:
            row["nsp_accuracy"] = totals.get("nsp_correct", 0.0) / max(totals["rows"], 1e-12)
        if self.peak and totals["rows"]:
            seqlen = int(totals["tokens"] / totals["rows"])
            tokens_per_s = totals["tokens"] / seconds
            row["mfu"] = tokens_per_s * flops_per_token(self.model.config, seqlen) / (self.peak * self.ctx.world_size)
        return row

    def evaluate(self, model):
        if self.eval_data is None:
            return None
        return evaluate(model, self.eval_data, self.ctx, self.opts.eval_batches)

    def save_checkpoint(self, model, out: Path, step: int, state: dict, keep: int) -> None:
        write_checkpoint(out, step, model, self.tokenizer, state, self.info, keep=keep)


def pretrain(opts: PretrainOptions) -> Path:
    with distributed.session(opts.device) as ctx:
        return _pretrain(opts, ctx)


def _pretrain(opts: PretrainOptions, ctx: distributed.DistributedContext) -> Path:
    out = Path(opts.out)
    if opts.steps < 1:
        raise BertkitError(f"--steps must be at least 1, got {opts.steps}")
    data = PretrainingLoader(opts.data, opts.batch_size, seed=opts.seed, drop_last=True, max_tokens=opts.max_tokens)
    eval_data = PretrainingLoader(opts.eval_data, opts.batch_size, shuffle=False, seed=opts.seed) if opts.eval_data else None
    if eval_data is not None and eval_data.nsp != data.nsp:
        raise BertkitError(f"--eval-data {opts.eval_data} holds {shard_kind(eval_data.nsp)}, --data {opts.data} holds "
                           f"{shard_kind(data.nsp)}: make both with --no-nsp or both without")
    if opts.max_tokens is not None:
        if data.max_seq_length and opts.max_tokens < data.max_seq_length:
            raise BertkitError(f"--max-tokens {opts.max_tokens} is smaller than one instance of these shards "
                               f"(up to {data.max_seq_length} tokens); raise it to at least that")
    elif opts.batch_size % (ctx.world_size * opts.accumulate):
        raise BertkitError(f"--batch-size {opts.batch_size} is not divisible by {ctx.world_size} process(es) x "
                           f"--accumulate {opts.accumulate}")
    if opts.max_tokens is None and len(data) == 0:
        raise BertkitError(f"{opts.data}: {data.num_instances} instances are fewer than one batch of {opts.batch_size}")
    torch.manual_seed(opts.seed)  # the same initial weights on every rank
    model, tokenizer = build_model(opts, data)
    info = {"task": "pretraining", "data": str(opts.data), "options": {k: v for k, v in asdict(opts).items() if k != "extra"}}
    job = PretrainingJob(data, eval_data, opts, ctx, model, tokenizer, info)
    loop = LoopOptions(precision=opts.precision, accumulate=opts.accumulate, log_every=opts.log_interval,
                       eval_before=opts.eval_before and eval_data is not None,
                       eval_every=opts.eval_interval if eval_data is not None else 0, eval_at_epoch_end=False,
                       ckpt_interval=opts.ckpt_interval, ckpt_at_epoch_end=False, keep_checkpoints=opts.keep_checkpoints,
                       resume=opts.resume, resume_or_start=opts.resume_or_start, max_minutes=opts.max_minutes,
                       fresh_start_hint="use --resume-or-start to start fresh",
                       resume_same_steps=False,  # pretraining may be resumed with more --steps
                       tensorboard=True, progress=opts.progress)
    optim = opts.optimizer_spec()
    def write_options():  # once the resume checks have passed: a refused run overwrites nothing
        if ctx.is_main:
            (out / "options.json").write_text(json.dumps(info["options"], indent=2) + "\n")

    result = run_training(job, model, ctx, out, opts.steps, optim, loop, before_training=write_options)
    final = out / "final"
    bytes_read = ctx.gather_object(data.bytes_read)  # shard bytes each rank read: about 1/N of the data each
    if ctx.is_main:
        from ..checkpoint import save

        last = result.last_results
        save(model, final, tokenizer, info={**info, "step": result.step, "shard_bytes_read_per_rank": bytes_read,
                                            **({"eval": last} if last else {})})
        if opts.plot:
            png = plot_metrics(out / "metrics.jsonl", out / "loss.png")
            if png is None:
                say("bertkit: note: --plot needs matplotlib: pip install matplotlib")
    ctx.barrier()
    return final


__all__ = ["PretrainOptions", "PretrainingJob", "pretrain", "evaluate"]
