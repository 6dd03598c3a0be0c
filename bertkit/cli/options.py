"""Flags several commands share: where the model runs, in which precision, and how training runs."""

from __future__ import annotations

import dataclasses
import os


def add_device_arguments(p) -> None:
    """--device and --precision (with GluonNLP's --dtype spelling) for any command that runs a model."""
    p.add_argument("--device", default="auto", metavar="DEV",
                   help="auto (CUDA when available), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--precision", "--dtype", dest="precision", default="fp32", metavar="P",
                   help="fp32, bf16 (CUDA, or a CPU with AVX512_BF16/AMX) or fp16 (CUDA); float32/bfloat16/float16 "
                        "also accepted. Autocast: weights and checkpoints stay fp32 (default fp32)")


def add_threads_argument(p, help: str = "CPU threads for torch (default: torch's choice)") -> None:
    p.add_argument("--threads", type=int, help=help)


def apply_threads(args) -> None:
    """torch's CPU threads as `--threads` asks (left to torch when the flag is absent)."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def add_quantize_argument(p) -> None:
    """--quantize int8 for a command that runs a PyTorch model on the CPU (`embed`, `predict`)."""
    p.add_argument("--quantize", choices=("int8",),
                   help="int8 weights per output channel and int8 activations per token (bertkit/cpu/int8.py); "
                        "CPU, fp32 only")


def add_training_arguments(p) -> None:
    """The one training loop's flags (train/loop.py), for `finetune` and `squad`."""
    add_device_arguments(p)
    p.add_argument("--max-steps", type=int, metavar="N",
                   help="train for N optimizer steps, overriding --epochs (the learning-rate schedule ends there; "
                        "a last partial epoch is scored too)")
    p.add_argument("--max-tokens", type=int, metavar="N",
                   help="batches of up to N real tokens (drawn at random) instead of --batch-size rows")
    p.add_argument("--ckpt-interval", type=int, default=0, metavar="STEPS",
                   help="also write a resumable checkpoint every STEPS optimizer steps (always at each epoch end)")
    p.add_argument("--resume", action="store_true",
                   help="continue the unfinished run in --out from its newest checkpoint (same flags as the first run)")


def config_from_args(cls, args, **given):
    """A job's config dataclass `cls` from the parsed flags of its fields' names: a flag the command
    lacks or leaves unset (None) keeps the field's default; `given` wins over both."""
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if f.init and getattr(args, f.name, None) is not None}
    return cls(**{**flags, **given})


def is_main_process() -> bool:
    """Rank 0 of a torchrun job (or a plain run): the one that prints results."""
    return int(os.environ.get("RANK", "0")) == 0
