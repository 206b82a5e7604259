"""One process at a time in a run directory: an exclusive ``flock`` on ``<run dir>/.lock``.

The lock is held by the process (re-entrant inside it: several ``Store`` objects of one run share it) and
released when the last holder lets go or the process dies, however it dies, so a killed run never
leaves a stale lock. A second process is refused at once with the holder's PID.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from lesion.errors import LesionError

_HELD: dict[str, list[int]] = {}  # real path of the run directory -> [fd, holders]
_GUARD = threading.Lock()


def acquire(root: Path) -> str:
    """Lock ``root`` for this process (or count one more holder); returns the key for ``release``."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LesionError(
            f"cannot use {root} as a run directory ({e.strerror or e}); expected a new or existing folder"
        ) from None
    key = os.path.realpath(root)
    with _GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
            return key
        fd = os.open(os.path.join(key, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LesionError(
                f"run directory {root} is in use by another lesion process (PID {holder}); wait for it to "
                "finish, or pass another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = [fd, 1]
        return key


def release(key: str) -> None:
    with _GUARD:
        held = _HELD.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _HELD[key]
            os.close(held[0])  # closing the descriptor releases the flock
