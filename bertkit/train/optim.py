"""Optimizers and the learning-rate schedule used to train BERT, for any model.

- `adamw`: `torch.optim.AdamW` (bias-corrected Adam with decoupled weight decay).
- `bertadam`: Google BERT's `AdamWeightDecayOptimizer` (optimization.py): Adam with decoupled
  weight decay and *no* bias correction, the optimizer the original checkpoints were fine-tuned with.
- `lamb`: LAMB (You et al., 2020): bias-corrected Adam direction plus weight decay, scaled per
  tensor by the trust ratio ||w|| / ||update|| (1 where either norm is zero); for large-batch pretraining.

`build_optimizer` exempts biases and LayerNorm weights from weight decay, as Google's code does
(it keys on names containing "bias", "LayerNorm", "layer_norm"; here: every 1-D parameter, which
is the same set for BERT and also covers other norms). `linear_warmup_decay` is BERT's schedule:
linear warm-up from 0 to the peak rate, then linear decay to 0 at `total_steps`.
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ..errors import BertkitError


class _AdamMoments(Optimizer):
    """The loop BERT-Adam and LAMB share: Adam's first and second moments per parameter, then a
    subclass's `direction` (weight decay included), applied as w -= lr * direction."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"{type(self).__name__}: lr, eps, weight_decay must be >= 0 and betas in [0, 1)")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def direction(self, p, m, v, t: int, group: dict) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.add_(self.direction(p, m, v, state["step"], group), alpha=-group["lr"])
        return loss


class BertAdam(_AdamMoments):
    """Adam with decoupled weight decay and no bias correction (Google BERT's optimization.py).

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  w -= lr * (m / (sqrt(v) + eps) + wd * w)
    """

    def direction(self, p, m, v, t, group):
        update = m / (v.sqrt() + group["eps"])
        if group["weight_decay"]:
            update.add_(p, alpha=group["weight_decay"])
        return update


class Lamb(_AdamMoments):
    """LAMB: per-tensor trust ratio ||w|| / ||adam_update + wd * w|| on a bias-corrected Adam step."""

    def direction(self, p, m, v, t, group):
        b1, b2 = group["betas"]
        update = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + group["eps"])
        if group["weight_decay"]:
            update.add_(p, alpha=group["weight_decay"])
        w_norm, u_norm = p.norm(), update.norm()
        trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
        return update * trust


OPTIMIZERS = {"adamw": torch.optim.AdamW, "bertadam": BertAdam, "lamb": Lamb}


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weight matrices/embeddings (decayed) and biases + norm weights (not decayed)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: torch.nn.Module, name: str = "adamw", lr: float = 5e-5, weight_decay: float = 0.01,
    epsilon: float = 1e-6, betas: tuple[float, float] = (0.9, 0.999),
) -> Optimizer:
    """An optimizer over `model`'s trainable parameters, no weight decay on biases and LayerNorm weights.

    name: "adamw" (torch.optim.AdamW), "bertadam" (Google BERT's, no bias correction) or "lamb".
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in OPTIMIZERS:
        raise BertkitError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    if not lr > 0:
        raise BertkitError(f"learning rate must be positive, got {lr}")
    if epsilon < 0 or weight_decay < 0:
        raise BertkitError(f"epsilon and weight decay must be >= 0, got {epsilon} and {weight_decay}")
    # The fused AdamW kernel is several times faster than the per-tensor loop, on CPU as on GPU.
    extra = {"fused": True} if key == "adamw" else {}
    return OPTIMIZERS[key](param_groups(model, weight_decay), lr=lr, betas=betas, eps=epsilon, **extra)


def linear_warmup_decay(optimizer: Optimizer, warmup_steps: int, total_steps: int, last_epoch: int = -1) -> LambdaLR:
    """BERT's schedule: lr rises linearly from 0 over `warmup_steps`, then falls linearly to 0 at `total_steps`.

    Call `scheduler.step()` once per optimizer step. Multiplies each group's initial lr. The same
    factors as Hugging Face's `get_linear_schedule_with_warmup` (step 0 of a warm-up has lr 0).
    """
    warmup_steps, total_steps = int(warmup_steps), int(total_steps)
    if total_steps < 1 or warmup_steps < 0:
        raise BertkitError(f"schedule needs total_steps >= 1 and warmup_steps >= 0, got {total_steps} and {warmup_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return LambdaLR(optimizer, factor, last_epoch=last_epoch)


def apply_gradients(params, optimizer: Optimizer, scheduler, max_grad_norm: float, scaler=None) -> None:
    """One optimizer step as every training loop here takes it: unscale (fp16's gradient scaler, if
    given), clip (if > 0), step, advance the schedule, clear the gradients."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    # ceil, less a hair: 0.1 * 30 is 3.0000000000000004 in floating point and must give 3, not 4.
    return int(math.ceil(total_steps * warmup_ratio - 1e-9))
