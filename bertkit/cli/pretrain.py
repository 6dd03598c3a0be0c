"""`bertkit pretrain`: masked-LM + next-sentence pretraining from shards (torchrun for many processes)."""

from .options import add_device_arguments, add_threads_argument, apply_threads, config_from_args, is_main_process


def add_arguments(p):
    p.add_argument("--data", required=True, metavar="DIR", help="shard directory written by `bertkit pretrain-data`, or a glob pattern of its shards ('out/*.npz')")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--config", metavar="NAME", help="a named shape to train from random weights (default bert_4_256_4)")
    start.add_argument("--model", metavar="MODEL", help="a checkpoint to continue pretraining")
    p.add_argument("--layers", type=int, help="an explicit shape instead of --config: layers (with --hidden, --heads)")
    p.add_argument("--hidden", type=int, help="hidden size of an explicit shape")
    p.add_argument("--heads", type=int, help="attention heads of an explicit shape")
    p.add_argument("--ffn", type=int, help="feed-forward size of an explicit shape (default 4 x --hidden)")
    p.add_argument("--out", required=True, metavar="DIR", help="metrics.jsonl, checkpoint-STEP/ and final/ go here")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch: all processes and accumulation steps (default 32)")
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    p.add_argument("--warmup-ratio", type=float, default=0.01, help="share of steps with linear warmup (default 0.01)")
    p.add_argument("--optimizer", choices=("adamw", "bertadam", "lamb"), default="adamw")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--epsilon", type=float, default=1e-6)
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-interval", type=int, default=500, help="write a checkpoint every N steps (and at the end)")
    p.add_argument("--keep-checkpoints", type=int, default=3, help="how many checkpoints to keep (default 3)")
    p.add_argument("--eval-data", metavar="DIR", help="held-out shards to evaluate on")
    p.add_argument("--eval-interval", type=int, default=500, help="evaluate every N steps (and at the end)")
    p.add_argument("--eval-batches", type=int, help="evaluate on at most N batches (default all)")
    p.add_argument("--eval-before", action="store_true",
                   help="also evaluate before the first step: the untrained network's scores, as step 0 of metrics.jsonl")
    p.add_argument("--log-interval", type=int, default=10)
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    resume.add_argument("--resume-or-start", action="store_true", help="like --resume, but start fresh if there is none")
    p.add_argument("--dropout", type=float, help="override the model's dropout probability")
    p.add_argument("--max-minutes", type=float, help="stop after this much wall time (final checkpoint and eval included)")
    p.add_argument("--plot", action="store_true", help="write OUT/loss.png with the loss and accuracy curves")
    add_device_arguments(p)
    p.add_argument("--max-tokens", type=int, metavar="N",
                   help="global batches of up to N real tokens (length-sorted within each shard) instead of --batch-size rows")
    add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    from ..errors import BertkitError
    from ..train.pretrain import PretrainOptions, pretrain

    if args.max_tokens is not None and args.max_tokens < 1:
        raise BertkitError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    shape = {k: getattr(args, k) for k in ("layers", "hidden", "heads", "ffn")}
    if any(v is not None for v in shape.values()):
        if args.config or args.model:
            raise BertkitError("--layers/--hidden/--heads/--ffn give a shape of their own: drop --config/--model")
        missing = [f"--{k}" for k in ("layers", "hidden", "heads") if shape[k] is None]
        if missing:
            raise BertkitError(f"an explicit shape needs {', '.join(missing)} too")
        if any(v is not None and v < 1 for v in shape.values()):
            raise BertkitError("--layers, --hidden, --heads and --ffn must be at least 1")
    else:
        shape = None
    for name in ("steps", "batch_size", "accumulate", "ckpt_interval", "eval_interval", "log_interval"):
        if getattr(args, name) < 1:
            raise BertkitError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.warmup_ratio < 1:
        raise BertkitError(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    opts = config_from_args(PretrainOptions, args, shape=shape, progress=not args.no_progress)
    apply_threads(args)
    final = pretrain(opts)
    if is_main_process():
        print(f"done: model in {final}, metrics in {args.out}/metrics.jsonl")
