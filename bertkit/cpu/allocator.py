"""Keep freed memory in the process for reuse: glibc malloc settings for CPU training and inference.

PyTorch's CPU tensors come straight from malloc. glibc serves every allocation above 32 MB with a
fresh `mmap` and returns it to the kernel on free, so each large activation (a batch's attention
scores, a feed-forward output) is faulted in page by page, zero-filled by the kernel, on every step:
3.3M page faults for three SQuAD prediction batches of 64 windows. With mmap off and the heap's
top trimmed only above 2 GiB, freed blocks are reused instead. Measured on the project machine
(one thread, `bertkit` MiniLM QA model; docs/benchmarks.md): prediction 8.9 -> 7.9 s, a training
step 3.5 -> 3.3 s, peak RSS +100 to +300 MB (freed memory is kept, not returned).

This is what jemalloc or tcmalloc, the allocators PyTorch's CPU performance guides recommend, give
through LD_PRELOAD; glibc's `mallopt` gets most of it without a new dependency. The `bertkit`
command applies it to its own process; library users can call `keep_freed_memory()` themselves.
Set BERTKIT_MALLOC=default to leave malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_KEEP_UP_TO = 2**31 - 1  # bytes of free memory at the heap's top kept before trimming (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Tell glibc malloc to serve large blocks from the heap and keep freed memory; True if applied."""
    if not sys.platform.startswith("linux") or os.environ.get("BERTKIT_MALLOC", "").lower() == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_UP_TO))
