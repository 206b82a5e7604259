"""Opening files named by a user without hanging: only regular files are opened.

``open()`` on a FIFO blocks until a writer appears, and a character device can stream forever; a model
or data file must be a regular file (a symlink to one is followed), which is checked on the opened
descriptor, opened without blocking.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from lesion.errors import LesionError


def kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | Path, error: type[LesionError] = LesionError, what: str = "file") -> BinaryIO:
    """``open(path, "rb")`` of a regular file; ``error`` for a FIFO, device, socket or directory (the
    open itself never blocks: it is made with O_NONBLOCK, which regular files ignore)."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{path} is {kind_of(mode)}; expected a regular {what}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: str | Path, error: type[LesionError] = LesionError, what: str = "file") -> None:
    """``error`` unless ``path`` is a regular file (symlinks followed); never opens it."""
    path = Path(path)
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise error(f"{path} is {kind_of(mode)}; expected a regular {what}")
