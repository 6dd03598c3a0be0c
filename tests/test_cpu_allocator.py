"""bertkit.cpu.allocator: glibc keeps freed memory, so repeated large allocations stop faulting pages in."""

import os
import subprocess
import sys

import pytest

CHILD = """
import resource, sys, torch
from bertkit.cpu.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else False
torch.empty(1)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # warm-up: the heap grows until freed blocks fit the next allocation
    torch.ones(64 * 2**20 // 4).sum()
before = faults()
for _ in range(10):  # ten 64 MB tensors, allocated, written and freed in turn
    torch.ones(64 * 2**20 // 4).sum()
print(applied, faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_large_blocks_are_reused_instead_of_faulted_in_again():
    def run(mode, **env):
        out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True,
                             env={**os.environ, **env}).stdout.split()
        return out[0] == "True", int(out[1])

    applied, faults_kept = run("on")
    if not applied:
        pytest.skip("not glibc: mallopt unavailable")
    _, faults_default = run("off")
    # 64 MB is 16,384 pages: by default every allocation is a fresh mmap, faulted in page by page
    assert faults_default > 10 * 16_384 * 0.9
    assert faults_kept < faults_default / 10
    assert run("on", BERTKIT_MALLOC="default")[0] is False
