"""Where lesion writes: output paths checked before any work, files replaced atomically, folders
written complete or visibly incomplete.

- ``check_file_target``: a file output may be a new path or (with ``force``) an existing regular file;
  a device, FIFO, directory or symbolic link is never replaced, and a folder that cannot take a new file
  fails now, not after an hour of training.
- ``atomic_write``: write to a temporary name in the same directory, flush it, rename it into place.
- ``write_folder``: stage a folder output, move its files in, then write ``manifest.json`` last with
  each file's size and SHA-256; ``read_manifest`` refuses a folder without a matching manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from lesion.errors import LesionError

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


class OutputError(LesionError):
    """An output path that lesion will not write: not a regular file, exists without --force, unwritable."""


def check_file_target(path: str | Path, *, force: bool = False, flag: str = "--out") -> Path:
    """``path`` if a file may be written there; creates its missing parent folders."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # a parent that is a file is reported below
        st = None
    except OSError as e:
        raise OutputError(f"{flag} {str(path)!r}: cannot inspect it ({e.strerror or e})") from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(
                f"{flag} {str(path)!r} is {_kind(st.st_mode)}, not a regular file; lesion never replaces "
                "one: expected a new path or an existing regular file"
            )
        if not force:
            raise OutputError(f"{flag} {str(path)!r} already exists; pass --force to replace it")
    _check_writable_dir(path.parent, flag)
    return path


def check_dir_target(
    path: str | Path, files: Iterable[str], *, force: bool = False, flag: str = "--out"
) -> Path:
    """``path`` if a folder output may be written there: a new path or a directory whose files among
    ``files`` are regular (and, when any exists, ``force`` is given)."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise OutputError(
            f"{flag} {str(path)!r} exists and is not a directory; expected a new or existing folder"
        )
    _check_writable_dir(path, flag)
    for name in files:
        target = path / name
        if os.path.lexists(target):
            check_file_target(target, force=force, flag=flag)
    return path


def _check_writable_dir(folder: Path, flag: str) -> None:
    """Create ``folder`` if missing and prove a file can be created in it (``os.access`` lies to root)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".lesion-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(
            f"{flag}: cannot write into {str(folder)!r} ({e.strerror or e}); expected a writable folder"
        ) from None


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
    )  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def replace_into(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path`` unless ``path`` has meanwhile become something other than a file."""
    with contextlib.suppress(FileNotFoundError):
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            raise OutputError(f"{str(path)!r} is {_kind(mode)}, not a regular file; not replacing it")
    os.replace(tmp, path)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temporary file beside ``path`` (same suffix), flush it, rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        write(tmp)
        _fsync(tmp)
        replace_into(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_records(folder: Path, names: Iterable[str]) -> dict[str, dict]:
    """``{name: {"size": bytes, "sha256": hex}}`` for files under ``folder``."""
    return {n: {"size": (folder / n).stat().st_size, "sha256": sha256_file(folder / n)} for n in names}


def write_folder(out: Path, write: Callable[[Path], object], *, kind: str) -> list[str]:
    """Stage ``write(staging)``, move its files into ``out`` and write ``manifest.json`` last.

    An interruption while ``write`` runs leaves ``out`` as it was; one while the files move leaves it
    without a manifest, which ``read_manifest`` reports as incomplete. Returns the file names.
    """
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        write(staging)
        names = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        records = file_records(staging, names)
        (out / MANIFEST).unlink(missing_ok=True)  # from here until the end, the folder is incomplete
        for name in names:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            replace_into(staging / name, out / name)
        doc = {"kind": kind, "complete": True, "files": records}
        atomic_write(out / MANIFEST, lambda p: p.write_text(json.dumps(doc, indent=2, sort_keys=True)))
        return names
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_manifest(out: str | Path, *, verify: bool = True) -> dict:
    """The manifest of a complete folder output; an OutputError if it is missing, or (``verify``) any
    file's size or SHA-256 differs from what the manifest records."""
    out = Path(out)
    try:
        doc = json.loads((out / MANIFEST).read_text())
        files = doc["files"]
        valid = doc.get("complete") is True and isinstance(files, dict)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        valid = False
    if not valid:
        raise OutputError(
            f"{out} is incomplete: no valid {MANIFEST} (the writing was interrupted or never finished); "
            "expected a folder written to the end; run the command again"
        )
    for name, rec in files.items() if verify else ():
        path = out / name
        same = path.is_file() and path.stat().st_size == rec.get("size")
        if not same or sha256_file(path) != rec.get("sha256"):
            raise OutputError(f"{path} does not match {out / MANIFEST} (missing or changed since written)")
    return doc


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        os.fsync(f.fileno())
