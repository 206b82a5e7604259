"""A run directory whose finished work is addressed by content: re-running skips what is done.

Every job is a JSON-able spec. Its key is the SHA-256 of the canonical JSON of (spec, the keys of the jobs
it reads, the store's schema). A job's outputs are written into a private temporary directory and then
renamed to ``jobs/<key>`` in one step, so a job directory either holds everything or does not exist: an
interrupted run leaves only temporary directories, which are never read and are swept on the next start.

A run directory trusts nothing it finds. ``job.json`` records the size and SHA-256 of every output file;
a job counts as finished only if its job.json is valid and every file has its recorded size, and a job
is reused only after its files hash to what was recorded (``Store.reuse``). A job that fails either
check is moved aside with a ``RunDirWarning`` and computed again. One process at a time works in a run
directory (``_lock``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lesion.errors import LesionError
from lesion.experiments import _lock
from lesion.util.outputs import file_records, sha256_file

SCHEMA = 1  # bump when a job's outputs change meaning, so old results are not reused


def job_key(kind: str, params: Mapping[str, Any], deps: Mapping[str, str] | None = None) -> str:
    """The content address of a job: same kind, parameters and inputs give the same key."""
    doc = {"schema": SCHEMA, "kind": kind, "params": params, "deps": dict(sorted((deps or {}).items()))}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class RunDirWarning(UserWarning):
    """A finished job in a run directory failed its check and will be computed again."""


class Store:
    """``root/jobs/<key>/`` per finished job, each with ``job.json`` (its spec and its files' hashes)
    and its output files. Holds the run directory's lock while the object lives."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.jobs = self.root / "jobs"
        self._lock_key = _lock.acquire(self.root)  # before sweeping: another run's temporaries are its own
        weakref.finalize(self, _lock.release, self._lock_key)
        self.jobs.mkdir(parents=True, exist_ok=True)
        self._checked: set[str] = set()  # keys whose files were hashed (or written) by this process
        for stale in self.jobs.glob(".tmp-*"):  # left by an interrupted run; never read
            shutil.rmtree(stale, ignore_errors=True)

    def path(self, key: str) -> Path:
        return self.jobs / key

    def done(self, key: str) -> bool:
        """Finished: a valid job.json, and every file it records present with its recorded size."""
        return key in self._checked or self.problem(key, hashes=False) is None

    def spec(self, key: str) -> dict:
        if not self.done(key):
            raise LesionError(f"job {key} has not finished in {self.root}")
        return json.loads((self.jobs / key / "job.json").read_text())

    def problem(self, key: str, *, hashes: bool = True) -> str | None:
        """What is wrong with ``jobs/<key>`` (None: nothing); ``hashes`` also checks every SHA-256."""
        folder = self.jobs / key
        if not folder.is_dir():
            return "missing"
        doc = _read_job(folder / "job.json")
        if doc is None or doc.get("key") != key or not isinstance(doc.get("files"), dict):
            return "its job.json is missing, unreadable or records no file hashes"
        if not doc["files"]:  # every job writes something: an empty record is not a finished job
            return "its job.json records no output files"
        on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
        if unrecorded := sorted(on_disk - {"job.json"} - set(doc["files"])):
            return f"its job.json does not record {unrecorded[0]}"
        for name, rec in doc["files"].items():
            path = folder / name
            if not isinstance(rec, dict) or not path.is_file() or path.stat().st_size != rec.get("size"):
                return f"{name} is missing or has changed size"
            if hashes and sha256_file(path) != rec.get("sha256"):
                return f"{name} does not match its recorded SHA-256"
        return None

    def reuse(self, key: str) -> bool:
        """True if ``jobs/<key>`` can be reused: present and every file hashes as recorded. A damaged
        job is moved aside with a RunDirWarning (and False), so that it is computed again."""
        if key in self._checked:
            return True
        problem = self.problem(key)
        if problem is None:
            self._checked.add(key)
            return True
        if problem != "missing":
            warnings.warn(
                f"{self.jobs / key}: {problem}; the job will be computed again", RunDirWarning, stacklevel=2
            )
            self.discard(key)
        return False

    def verify_all(self) -> list[str]:
        """Hash every finished job in the store (``lesion reproduce --verify``); returns the damaged
        keys, which are moved aside with a warning."""
        keys = sorted(p.name for p in self.jobs.iterdir() if p.is_dir() and not p.name.startswith("."))
        return [k for k in keys if not self.reuse(k)]

    def discard(self, key: str) -> None:
        """Move ``jobs/<key>`` aside in one step, then delete it."""
        self._checked.discard(key)
        aside = self.jobs / f".tmp-bad-{key}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.jobs / key, aside)
        except FileNotFoundError:
            return
        shutil.rmtree(aside, ignore_errors=True)

    def commit(self, key: str, spec: Mapping[str, Any], write) -> Path:
        """Run ``write(tmpdir)`` to produce the outputs, then publish them as ``jobs/<key>`` atomically."""
        tmp = self.begin(key)
        try:
            write(tmp)
        except BaseException:
            self.abort(tmp)
            raise
        return self.publish(key, spec, tmp)

    def begin(self, key: str) -> Path:
        """A fresh private directory for ``key``'s outputs; nothing reads it until ``publish``."""
        tmp = self.jobs / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        return tmp

    def abort(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    def publish(self, key: str, spec: Mapping[str, Any], tmp: Path) -> Path:
        """Write ``job.json`` (with every file's size and SHA-256) last, flush everything, and rename
        ``tmp`` to ``jobs/<key>`` in one step; a damaged folder already there is replaced."""
        try:
            names = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
            _write_json(tmp / "job.json", {"key": key, **spec, "files": file_records(tmp, names)})
            _fsync_dir(tmp)
            final = self.jobs / key
            if final.exists() and self.problem(key) is None:  # finished meanwhile: keep the first
                shutil.rmtree(tmp)
                self._checked.add(key)
                return final
            self.discard(key)  # a folder without a valid job.json is unfinished work
            os.rename(tmp, final)
            _fsync_dir(self.jobs)
            self._checked.add(key)
            return final
        except BaseException:
            self.abort(tmp)
            raise


def _read_job(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def write_json_atomic(path: str | Path, doc: Any) -> None:
    """Write JSON next to ``path`` and rename it into place, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    _write_json(tmp, doc)
    os.replace(tmp, path)


def _write_json(path: Path, doc: Any) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    for p in path.iterdir() if path.is_dir() else ():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
