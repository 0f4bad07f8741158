"""Process-level tuning that makes CPU generation faster.

PyTorch's CPU convolutions ask for scratch buffers of tens of megabytes on every
call.  glibc serves blocks that large with a fresh ``mmap`` and unmaps them on
free, so every UNet call pays hundreds of thousands of page faults.  Telling
the allocator to keep such blocks in its heap (no mmap threshold, no trimming)
lets them be reused: about 20-30% faster per image on a 2-core CPU in
benchmarks/bench_vs_diffusers.py, with the same peak memory.

Set ``BRUSHWORK_NO_MALLOC_TUNING=1`` to leave the allocator alone.

Also here: how many CPU threads torch may use (``--threads``, ``BRUSHWORK_THREADS``,
or by default the cores that other programs leave free).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
from dataclasses import dataclass
from typing import Iterator, Optional

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_tuned = False


M_MMAP_THRESHOLD = -3


def _libc_function(name: str, *argtypes):
    """A glibc function on Linux (None elsewhere, or where the libc has none: musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = list(argtypes)
    return fn


def tune_cpu_allocator() -> bool:
    """Keep large freed blocks for reuse (glibc on Linux only).  Returns whether it applied."""
    global _tuned
    if _tuned:
        return True
    mallopt = None if os.environ.get("BRUSHWORK_NO_MALLOC_TUNING") == "1" else _libc_function("mallopt", ctypes.c_int, ctypes.c_int)
    if mallopt is None:
        return False
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _tuned = ok
    log.debug("glibc allocator tuned for reuse: %s", ok)
    return ok


def memory_first_allocator() -> bool:
    """glibc settings for memory plans that put memory first: every block of 1 MiB or
    more is mapped on its own and handed back the moment it is freed (weights dropped,
    a decode's full-frame buffers), instead of staying in the heap (SDXL's released text
    encoders: 1.5 GiB that stayed resident, measured)."""
    global _tuned
    mallopt = _libc_function("mallopt", ctypes.c_int, ctypes.c_int)
    if mallopt is None:
        return False
    _tuned = False
    return mallopt(M_MMAP_MAX, 65536) == 1 and mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1 and mallopt(M_TRIM_THRESHOLD, 1 << 20) == 1


@contextlib.contextmanager
def large_blocks_returned() -> Iterator[None]:
    """While a VAE pass runs: blocks of 1 MiB or more mapped on their own and handed back
    when freed, even where the allocator is tuned for reuse.  A decode makes few, huge
    buffers; kept in a heap that never shrinks they fragment it (SD 1.5's 1024 px decode:
    6.1 GiB of peak RSS instead of 3.8, measured), while mapping them costs little next
    to the decode.  The sampler's reuse setting comes back afterwards."""
    mallopt = _libc_function("mallopt", ctypes.c_int, ctypes.c_int) if _tuned else None
    if mallopt is None:
        yield
        return
    mallopt(M_MMAP_THRESHOLD, 1 << 20)
    mallopt(M_MMAP_MAX, 65536)
    try:
        yield
    finally:
        mallopt(M_MMAP_MAX, 0)


def process_rss_bytes() -> int:
    """This process's resident memory in bytes (0 where it cannot be read)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # pragma: no cover - psutil is a dependency
        return 0


def return_freed_memory() -> bool:
    """Hand memory that was freed inside the heap back to the system (glibc's
    malloc_trim), so that dropping weights lowers the resident memory at once."""
    import gc

    gc.collect()
    trim = _libc_function("malloc_trim", ctypes.c_size_t)
    return bool(trim(0)) if trim is not None else False


# ---------------------------------------------------------------- CPU threads
#
# PyTorch starts one intra-op thread per core.  When other programs keep some of
# those cores busy, its threads spin and wait for each other at every parallel
# region: one measured image went from 106 s with the default threads to 9 s with
# one thread (benchmarks/bench_threads.py).  So, on the CPU, the engine asks for
# as many threads as there are cores that are actually free.

THREADS_ENV = "BRUSHWORK_THREADS"


from .devices import DeviceError  # noqa: E402 - (imports torch) shown to users as one line


class ThreadsError(DeviceError):
    pass


def choose_threads(cores: int, load: float) -> int:
    """Threads to use on ``cores`` usable cores when ``load`` of them are busy
    (the recent load average): the free cores, rounded to the nearest, at least 1
    and at most ``cores``."""
    cores = max(1, int(cores))
    try:
        load = float(load)
    except (TypeError, ValueError):
        load = 0.0
    if not load > 0:  # NaN, negative, zero
        load = 0.0
    free = int(cores - load + 0.5)
    return max(1, min(cores, free))


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), not all the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def recent_load() -> float:
    """The 1-minute load average (busy or waiting tasks); 0 where unknown (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def parse_threads(value) -> Optional[int]:
    """A ``--threads`` / BRUSHWORK_THREADS value -> a count, or None for automatic
    ("", "auto", "0")."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        text = str(value).strip().lower()
        if text in ("", "auto", "0"):
            return None
        try:
            n = int(text)
        except ValueError:
            raise ThreadsError(f"--threads / {THREADS_ENV} must be a whole number of CPU threads (or 'auto'); got {value!r}") from None
    if n == 0:
        return None
    if n < 0:
        raise ThreadsError(f"--threads / {THREADS_ENV} must be 1 or more (0 or 'auto': choose from the free cores); got {n}")
    return n


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    cores: int
    load: float
    source: str  # "auto", "--threads" or THREADS_ENV

    def note(self) -> Optional[str]:
        """One line for a command's header when fewer threads than cores are used; else None."""
        if self.threads >= self.cores:
            return None
        if self.source == "auto":
            return f"using {self.threads} of {self.cores} CPU threads: the others are busy; --threads N to change"
        return f"using {self.threads} of {self.cores} CPU threads (set by {self.source})"


def resolve_threads(requested=None, environ=None, cores: Optional[int] = None, load: Optional[float] = None) -> ThreadChoice:
    """The thread count to use: ``requested`` (--threads) first, then BRUSHWORK_THREADS,
    else :func:`choose_threads` from the usable cores and the recent load."""
    environ = os.environ if environ is None else environ
    cores = usable_cores() if cores is None else cores
    n = parse_threads(requested)
    if n is not None:
        return ThreadChoice(n, cores, 0.0, "--threads")
    n = parse_threads(environ.get(THREADS_ENV))
    if n is not None:
        return ThreadChoice(n, cores, 0.0, THREADS_ENV)
    load = recent_load() if load is None else load
    return ThreadChoice(choose_threads(cores, load), cores, load, "auto")


_interop_set = False
_auto_choice: Optional[ThreadChoice] = None


def apply_threads(requested=None) -> ThreadChoice:
    """Resolve the thread count and give it to torch (intra-op; inter-op once, where
    torch still allows it).  Called by the engine at start on the CPU."""
    global _interop_set
    import torch

    global _auto_choice
    choice = resolve_threads(requested, load=None if _auto_choice is None else _auto_choice.load)
    if choice.source == "auto":
        # decided once per process: a later engine (the load has changed meanwhile)
        # keeps the count, so the same request keeps giving the same pixels
        _auto_choice = choice = _auto_choice or choice
    torch.set_num_threads(choice.threads)
    if not _interop_set:
        _interop_set = True
        try:  # only allowed once, before any inter-op work has started
            torch.set_num_interop_threads(choice.threads)
        except RuntimeError:
            pass
    log.debug("CPU threads: %s", choice)
    return choice


class TorchvisionMismatch(RuntimeError):
    """An installed torchvision that does not work with the installed torch."""


def torchvision_problem() -> Optional[str]:
    """None when torchvision is absent or imports; else a message with the fix.

    Brushwork does not need torchvision, but transformers and diffusers import it
    when it is installed, and one built for another torch (another version, or a
    CUDA build beside a CPU one) fails inside them with an obscure operator error.
    Only the upscaler model files (spandrel) need it, as a matching pair."""
    import importlib.util

    try:
        if importlib.util.find_spec("torchvision") is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure here is the mismatch
        import torch

        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return (
            f"the installed torchvision does not work with torch {torch.__version__} ({first}). Brushwork itself does not need torchvision, "
            "but the libraries it uses import it when it is there. Fix: pip uninstall torchvision (you lose only upscaler model files), "
            "or install a matching pair, e.g. pip install torch==2.14.1 torchvision==0.29.1 (docs/upscalers.md)."
        )
    return None
