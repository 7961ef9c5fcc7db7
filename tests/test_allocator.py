"""The allocator settings the command line applies when it starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from resrec.allocator import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_keep_freed_memory_applies_once_and_again() -> None:
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # a second call is harmless


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_a_large_block_freed_and_taken_again_does_not_fault_its_pages_again() -> None:
    # In a fresh interpreter: with the settings, a 200 MB block freed and taken again
    # comes back from the heap, so filling it again costs no page faults; without them
    # glibc unmaps it on every free, and each new block faults its pages in again
    # (about 800 faults a block here, where the kernel maps several pages per fault).
    code = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from resrec.allocator import keep_freed_memory
    assert keep_freed_memory()
a = np.ones(50_000_000, np.float32); del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    a = np.ones(50_000_000, np.float32); del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", code, mode], capture_output=True, text=True, check=True
            ).stdout
        )
        for mode in ("keep", "default")
    }
    assert faults["default"] > 1_000, faults
    assert faults["keep"] < 100, faults
