"""Training pieces shared by fine-tuning and pretraining: optimizers, the learning-rate schedule, loops.

    from bertkit.train.optim import build_optimizer, linear_warmup_decay
    opt = build_optimizer(model, "adamw", lr=5e-5, weight_decay=0.01, epsilon=1e-6)
    sched = linear_warmup_decay(opt, warmup_steps=100, total_steps=1000)
"""

from .optim import OPTIMIZERS, BertAdam, Lamb, build_optimizer, linear_warmup_decay, param_groups

__all__ = ["OPTIMIZERS", "BertAdam", "Lamb", "build_optimizer", "linear_warmup_decay", "param_groups"]
