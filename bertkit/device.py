"""Where a model runs and in which precision: `--device` and `--precision` for every command.

    device = resolve_device("auto")            # cuda when torch sees a GPU, else cpu
    precision = resolve_precision("bf16", device)
    with autocast(device, precision):
        logits = model(ids, segments, lengths)

- Devices: `auto`, `cpu`, `cuda`, `cuda:N`. Asking for CUDA where torch has none, or for a GPU index
  that does not exist, is a user's mistake (`BertkitError`, one line), never a silent CPU run.
- Precisions: `fp32`, `bf16`, `fp16` (GluonNLP's `--dtype float32|float16|bfloat16` spellings are
  accepted). Reduced precision is autocast: master weights, optimizer state and saved checkpoints
  stay float32; matrix multiplies run in the low precision, reductions (softmax, LayerNorm, losses)
  in float32. fp16 trains with a gradient scaler (`needs_grad_scaler`), and only on CUDA: CPUs have
  no fast fp16 matrix multiply. bf16 runs on CUDA and on CPUs with native bf16 instructions
  (AVX512_BF16 or AMX); elsewhere oneDNN emulates it at several times fp32's cost, so it is
  refused with the reason rather than run slowly.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from .errors import BertkitError

PRECISIONS = ("fp32", "bf16", "fp16")
_ALIASES = {"float32": "fp32", "fp32": "fp32", "32": "fp32", "bfloat16": "bf16", "bf16": "bf16",
            "float16": "fp16", "fp16": "fp16", "half": "fp16", "16": "fp16"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """`auto` (or None): the first GPU when torch sees one, else the CPU. `cuda` means the current GPU
    (`LOCAL_RANK`'s under torchrun once `torch.cuda.set_device` ran)."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        index = spec.partition(":")[2]
        if index and not index.isdigit():
            raise BertkitError(f"--device {spec}: not a device; use auto, cpu, cuda or cuda:N")
        if not torch.cuda.is_available():
            raise BertkitError(f"--device {spec}: this torch sees no CUDA GPU (torch {torch.__version__}, "
                               f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu")
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise BertkitError(f"--device {spec}: there is no GPU {index}; this machine has {count} "
                               f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
        return torch.device("cuda", int(index) if index else torch.cuda.current_device())
    raise BertkitError(f"--device {spec}: not a device; use auto, cpu, cuda or cuda:N")


@functools.cache  # one entry per field ("flags", "vendor_id"): /proc/cpuinfo is read once for each
def _cpuinfo(field: str) -> str:
    """The value of the first `field` line of /proc/cpuinfo (Linux; "" elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this CPU (/proc/cpuinfo on Linux; empty elsewhere)."""
    return frozenset(_cpuinfo("flags").split())


def cpu_vendor() -> str:
    """The CPU's vendor id: "GenuineIntel", "AuthenticAMD", ... ("" where /proc/cpuinfo does not say)."""
    return _cpuinfo("vendor_id")


def native_bf16_cpu(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512_BF16 on Zen 4 / Cooper Lake+, AMX on Sapphire Rapids+)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def resolve_precision(name: str | None, device: torch.device, flags: frozenset[str] | None = None) -> str:
    """The canonical precision name for `device`, or a one-line `BertkitError` saying why it cannot run there."""
    key = _ALIASES.get(str(name or "fp32").strip().lower())
    if key is None:
        raise BertkitError(f"--precision {name}: use fp32, bf16 or fp16 (or --dtype float32/bfloat16/float16)")
    if device.type == "cpu":
        if key == "fp16":
            raise BertkitError(f"--precision {name} needs a CUDA GPU: CPUs have no fast fp16 matrix multiply; "
                               "use --precision bf16 on a CPU with AVX512_BF16 or AMX, or fp32")
        if key == "bf16" and not native_bf16_cpu(flags):
            raise BertkitError(f"--precision {name}: this CPU has no native bf16 instructions (AVX512_BF16 or AMX), "
                               "so bf16 would run several times slower than fp32; use --precision fp32")
    elif device.type == "cuda" and key == "bf16" and not torch.cuda.is_bf16_supported():
        raise BertkitError(f"--precision {name}: {torch.cuda.get_device_name(device)} has no bf16 support; use fp16 or fp32")
    return key


def autocast(device: torch.device, precision: str):
    """The context that runs a forward pass in `precision` on `device` (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def needs_grad_scaler(precision: str) -> bool:
    """fp16's narrow exponent underflows small gradients unless the loss is scaled up first."""
    return precision == "fp16"


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (the CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_device(obj, device: torch.device):
    """Tensors, and tuples, lists and dicts of them, moved to `device` (other values as they are)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True) if obj.device != device else obj
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB (None where the OS does not say)."""
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    except (ImportError, OSError):
        return None


@contextlib.contextmanager
def evaluating(model: torch.nn.Module):
    """Inference inside a training run or a caller's code: the model in eval mode without gradients,
    put back in the mode it was in afterwards (the caller may be mid-training)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
