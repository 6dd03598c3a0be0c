"""The options training jobs share: `JobConfig` for every job (pretraining too), `TrainConfig` for the
epoch-based fine-tuning jobs (`bertkit finetune` and `bertkit squad` flags of the same names)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BertkitError
from .loop import LoopOptions, OptimizerSpec


@dataclass
class JobConfig:
    """Batches, optimizer, device and checkpoints: what every training job takes, with the same flags."""

    batch_size: int = 32  # rows per batch, all processes together
    accumulate: int = 1  # gradient accumulation: an optimizer step every N batches
    max_tokens: int | None = None  # batches of up to this many real tokens instead of `batch_size` rows
    lr: float = 5e-5
    optimizer: str = "adamw"  # adamw | bertadam | lamb
    epsilon: float = 1e-6
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0  # 0 turns clipping off
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; weights and checkpoints stay fp32)
    ckpt_interval: int = 0  # also write a resumable checkpoint every N optimizer steps (0: at epoch ends only)
    resume: bool = False  # continue the unfinished run in `out` from its newest checkpoint
    progress: bool = True  # a tqdm bar (stderr)

    def optimizer_spec(self) -> OptimizerSpec:
        return OptimizerSpec(self.optimizer, self.lr, self.weight_decay, self.epsilon, self.warmup_ratio, self.max_grad_norm)


@dataclass
class TrainConfig(JobConfig):
    """An epoch-based fine-tuning job with a dev set."""

    epochs: int = 3
    max_steps: int | None = None  # optimizer steps to train for, overriding `epochs` (the schedule ends there)
    eval_batch_size: int = 128
    max_train_examples: int | None = None  # a seeded random subset of the training set
    bucket_batches: int = 1  # batches per length-sorted group; 1: plain shuffled batches (bertkit/batches.py)
    log_every: int = 50  # optimizer steps between metrics.jsonl rows
    eval_before: bool = False  # score the dev set before training too (epoch 0)

    def check(self) -> None:
        for name in ("epochs", "batch_size", "accumulate", "eval_batch_size", "bucket_batches", "log_every"):
            if int(getattr(self, name)) < 1:
                raise BertkitError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise BertkitError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise BertkitError(f"--max-train-examples must be at least 1, got {self.max_train_examples}")
        if self.max_steps is not None and self.max_steps < 1:
            raise BertkitError(f"--max-steps must be at least 1, got {self.max_steps}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise BertkitError(f"--max-tokens must be at least 1, got {self.max_tokens}")
        if self.ckpt_interval < 0:
            raise BertkitError(f"--ckpt-interval must be at least 0, got {self.ckpt_interval}")

    def training_subset(self, examples: list) -> list:
        """The training examples, or with `max_train_examples` a seeded random subset of them (in file order)."""
        n = self.max_train_examples
        if n is None or n >= len(examples):
            return examples
        keep = np.sort(np.random.default_rng(self.seed).permutation(len(examples))[:n])
        return [examples[i] for i in keep]

    def loop_options(self, quiet: bool = False) -> LoopOptions:
        # no checkpoint when training ends: the job saves its result at once and drops its checkpoints
        return LoopOptions(precision=self.precision, accumulate=self.accumulate, log_every=self.log_every,
                           eval_before=self.eval_before, ckpt_interval=self.ckpt_interval, ckpt_at_end=False,
                           resume=self.resume, progress=self.progress, quiet=quiet)
