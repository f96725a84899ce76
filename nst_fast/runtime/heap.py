"""Keeping freed memory in the process while a CPU run lasts (glibc only).

glibc serves every allocation over its mmap threshold (at most 32 MiB) with a
fresh mmap() and unmaps it on free. Most activations and gradients of a VGG-19
step at 512 px are larger than that, so each step faults them in again and the
kernel zeroes them: ~90,000 page faults per step, and a 1.20x slower step at
512 px (1.28x at 768 px) on a 2-core CPU (benchmarks/bench_heap.py). Inside
keep_freed_memory() large blocks come from the heap and freed memory stays there
for the next step (StyleTransfer does this for CPU runs with blocks over 32 MiB, see
worth_keeping()); on leaving, glibc's defaults return and the heap is trimmed, so
the process gives the memory back.

NST_FAST_KEEP_MEMORY=0 turns this off, =all turns it on for runs of any size; a
GLIBC_TUNABLES that sets malloc tunables itself turns it off (the user's settings win).
"""
import contextlib
import ctypes
import functools
import os
import sys
import threading

# glibc's largest dynamic mmap threshold (64-bit): blocks up to this size come from
# the heap anyway once blocks of their size have been freed.
MMAP_THRESHOLD_MAX = 32 << 20
# mallopt() parameters and glibc's defaults for them (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
_KEEP_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int

_lock = threading.Lock()
_depth = 0


@functools.lru_cache(maxsize=None)
def _glibc():
    """The C library of this process if it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not all(hasattr(libc, name) for name in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    return libc


def _wanted() -> bool:
    if os.environ.get("NST_FAST_KEEP_MEMORY", "1").strip() == "0":
        return False
    return "glibc.malloc." not in os.environ.get("GLIBC_TUNABLES", "")


def keeps_freed_memory() -> bool:
    """Whether keep_freed_memory() takes effect here."""
    return _wanted() and _glibc() is not None


def worth_keeping(largest_block_bytes: int) -> bool:
    """Whether to keep freed memory for a run whose largest tensor is this large:
    only where some blocks are over MMAP_THRESHOLD_MAX (keeping measured 2-4% slower
    at 256 px on a 2-core AMD EPYC), or for every run with NST_FAST_KEEP_MEMORY=all."""
    if os.environ.get("NST_FAST_KEEP_MEMORY", "").strip() == "all":
        return keeps_freed_memory()
    return largest_block_bytes > MMAP_THRESHOLD_MAX and keeps_freed_memory()


@contextlib.contextmanager
def keep_freed_memory(enabled: bool = True):
    """Within: large allocations reuse freed memory instead of fresh pages.
    Yields whether that is in effect. Nested uses restore the defaults once, at the
    outermost exit."""
    global _depth
    libc = _glibc() if enabled and _wanted() else None
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, _KEEP_TRIM_THRESHOLD)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
