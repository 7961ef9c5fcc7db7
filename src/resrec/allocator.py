"""Keep freed memory in the process, so large per-step tensors do not page-fault.

Training allocates and frees tensors of tens to hundreds of megabytes on every
step (the side stage of the ``accurate`` preset gathers a decoder row per rating
of 256 movies at once). glibc's allocator serves blocks over 32 MB with a fresh
``mmap`` and returns them to the kernel when freed, and it gives back freed
memory at the top of its heap too, so every step faults the same pages in again
and the kernel zeroes them: on ML-1M the ``accurate`` preset spent as much time in
the kernel as in its own arithmetic (80 s of system time against 90 s of user time).

:func:`keep_freed_memory` raises those two thresholds with ``mallopt``, so freed
blocks are reused by the next step. The command line calls it when it starts;
Python programs can call it once before training. It changes nothing but glibc's
allocator settings, and does nothing on other C libraries or systems.

Limitations
    Memory freed after a peak stays with the process (it is reused, not given back
    to the system) until the process ends, so the resident size reported after a
    large step stays near that step's peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap and are reused
_TRIM_THRESHOLD = (1 << 31) - 1  # largest value mallopt takes: keep freed heap memory

_applied = False


def keep_freed_memory() -> bool:
    """Tell glibc's allocator to keep and reuse freed blocks; True if it was applied.

    Safe to call more than once and on any system (elsewhere than Linux with glibc
    it returns False and changes nothing).
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok
    if not ok:
        log.debug("mallopt refused the allocator settings; left as they were")
    _applied = ok
    return ok
