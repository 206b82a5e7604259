"""A run directory whose finished work is addressed by content: re-running skips what is done.

Every job is a JSON-able spec. Its key is the SHA-256 of the canonical JSON of (spec, the keys of the jobs
it reads, the store's schema). A job's outputs are written into a private temporary directory and then
renamed to ``jobs/<key>`` in one step, so a job directory either holds everything or does not exist: an
interrupted run leaves only temporary directories, which are never read and are swept on the next start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lesion.errors import LesionError

SCHEMA = 1  # bump when a job's outputs change meaning, so old results are not reused


def job_key(kind: str, params: Mapping[str, Any], deps: Mapping[str, str] | None = None) -> str:
    """The content address of a job: same kind, parameters and inputs give the same key."""
    doc = {"schema": SCHEMA, "kind": kind, "params": params, "deps": dict(sorted((deps or {}).items()))}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class Store:
    """``root/jobs/<key>/`` per finished job, each with ``job.json`` (its spec) and its output files."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.jobs = self.root / "jobs"
        self.jobs.mkdir(parents=True, exist_ok=True)
        for stale in self.jobs.glob(".tmp-*"):  # left by an interrupted run; never read
            shutil.rmtree(stale, ignore_errors=True)

    def path(self, key: str) -> Path:
        return self.jobs / key

    def done(self, key: str) -> bool:
        return (self.jobs / key / "job.json").is_file()

    def spec(self, key: str) -> dict:
        if not self.done(key):
            raise LesionError(f"job {key} has not finished in {self.root}")
        return json.loads((self.jobs / key / "job.json").read_text())

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
        """Write ``job.json`` last, flush everything, and rename ``tmp`` to ``jobs/<key>`` in one step."""
        try:
            _write_json(tmp / "job.json", {"key": key, **spec})
            _fsync_dir(tmp)
            final = self.jobs / key
            if final.exists():  # finished meanwhile by another worker: keep the first
                shutil.rmtree(tmp)
                return final
            os.rename(tmp, final)
            _fsync_dir(self.jobs)
            return final
        except BaseException:
            self.abort(tmp)
            raise


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
