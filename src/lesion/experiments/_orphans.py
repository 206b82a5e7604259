"""Worker processes die with their driver: a killed ``lesion reproduce`` leaves no job running.

On Linux each worker asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), and
checks at once that the parent is still the driver that started it (it may have died in between).
Elsewhere a thread watches the parent's PID once a second.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


def die_with(parent: int) -> None:
    """Make this process end when process ``parent`` (its parent) ends, however that ends."""
    if sys.platform.startswith("linux") and _pdeathsig(signal.SIGKILL):
        if os.getppid() != parent:  # the driver died before the signal was armed
            os._exit(1)
        return
    threading.Thread(target=_watch, args=(parent,), daemon=True, name="lesion-orphan-watch").start()


def _pdeathsig(sig: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
