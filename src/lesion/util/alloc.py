"""Allocator tuning, kept free of heavy imports so the command line can call it first."""

from __future__ import annotations


def tune_allocator() -> bool:
    """Keep glibc from returning large temporaries to the OS after every use (a big cost on CPU).

    Sets M_MMAP_THRESHOLD to 1 GiB and M_TRIM_THRESHOLD to 2 GiB, as MALLOC_MMAP_THRESHOLD_ /
    MALLOC_TRIM_THRESHOLD_ would. Called by the command line at start; library users may call it too.
    Returns False where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
