"""Process-level tuning that makes CPU generation faster.

PyTorch's CPU convolutions ask for scratch buffers of tens of megabytes on every
call.  glibc serves blocks that large with a fresh ``mmap`` and unmaps them on
free, so every UNet call pays hundreds of thousands of page faults.  Telling
the allocator to keep such blocks in its heap (no mmap threshold, no trimming)
lets them be reused: about 20-30% faster per image on a 2-core CPU in
benchmarks/bench_vs_diffusers.py, with the same peak memory.

Set ``BRUSHWORK_NO_MALLOC_TUNING=1`` to leave the allocator alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_tuned = False


def tune_cpu_allocator() -> bool:
    """Keep large freed blocks for reuse (glibc on Linux only).  Returns whether it applied."""
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("BRUSHWORK_NO_MALLOC_TUNING") == "1":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _tuned = ok
    log.debug("glibc allocator tuned for reuse: %s", ok)
    return ok
