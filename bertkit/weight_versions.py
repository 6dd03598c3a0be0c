"""Has a weight changed since a copy was derived from it? For the re-laid-out weight caches of CPU inference.

`packed_linear.py` and `fused_linear.py` keep a re-laid-out copy of each Linear weight and must
rebuild it when the weight changes. A tensor's version counter records in-place changes made
through PyTorch's ops (`copy_`, `mul_`, a checkpoint load), but not the ones the fused and foreach
optimizer kernels make: `AdamW(fused=True).step()` changes every weight and leaves its version as it
was (tests/test_fused_linear.py shows it). So the key also counts optimizer steps, through PyTorch's
global optimizer step hook: any step of any optimizer makes every cached copy stale.
"""

from __future__ import annotations

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

_optimizer_steps = 0


def _count_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_step)


def weight_key(weight: torch.Tensor) -> tuple:
    """Equal for two calls only if `weight` cannot have changed in between."""
    # inference tensors (made under inference_mode) have no version counter, and cannot change
    return weight.data_ptr(), None if weight.is_inference() else weight._version, _optimizer_steps
