"""Re-laid-out copies of weights for the CPU kernels: the layout hint they are made for, and when they are stale.

The oneDNN linears (`onednn.py`), the MKL-packed linears (`packed_linear.py`) and the native encoder
(`native/encoder.py`) keep re-laid-out copies of weights and must rebuild them when a weight changes.
A tensor's version counter records in-place changes made through PyTorch's ops (`copy_`, `mul_`, a
checkpoint load), but not the ones the fused and foreach optimizer kernels make:
`AdamW(fused=True).step()` changes every weight and leaves its version as it was
(tests/test_fused_linear.py shows it). So the keys also count optimizer steps, through PyTorch's
global optimizer step hook: any step of any optimizer makes every cached copy stale.

The global hooks (optimizer steps, parameter and submodule registrations) are registered the first
time a key is taken, that is when the first cached copy is made, not at import: a process that never
runs a CPU kernel (training on a GPU, importing `bertkit.model` to read a config) gets none.
Steps and registrations before that moment need no counting, as no copy existed to go stale.
"""

from __future__ import annotations

import operator
import threading

import torch

# MKL's packing and oneDNN's re-layout take a typical row count as a hint; any row count works after.
PACK_FOR_ROWS = 64

_optimizer_steps = 0
_registrations = 0  # parameters and submodules given to any module (a model's structure may have changed)
_hooks_registered = False
_hooks_lock = threading.Lock()


def _count_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


def _count_registration(module, name, value) -> None:
    global _registrations
    _registrations += 1


def _watch_changes() -> None:
    """Register the global hooks that the keys count, once per process."""
    global _hooks_registered
    with _hooks_lock:
        if _hooks_registered:
            return
        from torch.nn.modules.module import (register_module_module_registration_hook,
                                             register_module_parameter_registration_hook)
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(_count_step)
        register_module_parameter_registration_hook(_count_registration)
        register_module_module_registration_hook(_count_registration)
        _hooks_registered = True


def weight_key(weight: torch.Tensor) -> tuple:
    """Equal for two calls only if `weight` cannot have changed in between."""
    if not _hooks_registered:
        _watch_changes()
    # inference tensors (made under inference_mode) have no version counter, and cannot change
    return weight.data_ptr(), None if weight.is_inference() else weight._version, _optimizer_steps


_data_ptr, _version = torch.Tensor.data_ptr, operator.attrgetter("_version")


class ParametersWatch:
    """`key()` is equal for two calls only if no parameter of `module` can have changed in between:
    none changed in place or by an optimizer step, none got new storage (`.data =`, `.half()`), and
    no parameter or submodule was swapped for another (`load_state_dict(assign=True)`, quantization).

    Cheap enough to ask on every forward pass (about 20 us for a 6-layer model): walking a model's
    parameters takes ten times that, so the list is kept and walked again only after some module,
    anywhere, has been given a new parameter or submodule (PyTorch's global registration hooks)."""

    def __init__(self, module: torch.nn.Module):
        _watch_changes()
        self.module, self._seen_registrations, self._params = module, None, []

    def key(self) -> tuple:
        if self._seen_registrations != _registrations:
            self._params, self._seen_registrations = list(self.module.parameters()), _registrations
        params = self._params
        try:
            versions = tuple(map(_version, params))
        except RuntimeError:  # an inference tensor among them: it has no version and cannot change
            versions = tuple(None if p.is_inference() else p._version for p in params)
        return tuple(map(id, params)), tuple(map(_data_ptr, params)), versions, _optimizer_steps
