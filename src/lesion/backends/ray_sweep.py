"""A user's own sweep on a Ray cluster: the lesions split into contiguous ranges, one Ray task each.

``sweep(..., backend="ray")`` and ``unit_table(..., backend="ray")`` (and ``lesion analyze MODEL
--backend ray``) land here. The driver resolves and fits the lesions once (so every shard deletes with
the very same fitted replacement), puts the model, its sites, the data, the metric and the fitted
lesions into Ray's object store as one object (one pickle keeps a site pointing at its module inside
the model copy), and each task evaluates its range with the same ``evaluate_lesions`` a local sweep
uses: the engines and their checks against the slow path run on every shard, on that shard's lesions.
The driver concatenates the ranges in order, so the table has the local table's rows and columns.

With ``resume=DIR`` each finished shard is written to ``DIR`` (``shard-00003.npz``, arrays only, read
back with ``allow_pickle=False``) and listed with its SHA-256 in ``DIR/shards.json``; a rerun with the
same ``DIR`` reads finished shards back and computes only the rest. ``shards.json`` also holds a
fingerprint of the sweep (the model's parameters and buffers, the lesions, the metric, the intact
values on the data): a directory from another sweep is refused, a shard whose bytes do not match its
hash is recomputed, never trusted.

Ray is imported only when a ray sweep runs (the ``ray`` extra).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesion.core.lesions import Lesion
from lesion.core.runner import Runner
from lesion.engine.dispatch import evaluate_lesions
from lesion.errors import LesionError
from lesion.util import Backend
from lesion.util.outputs import atomic_write

BACKENDS = ("local", "ray")
INDEX = "shards.json"
META = ("served", "fallbacks", "deviation", "examples", "computed")  # what a shard's engines did


def check_backend(backend: str, address: str | None, shards: int | None, resume) -> None:
    """Refuse options that do not fit together before any work starts."""
    if backend not in BACKENDS:
        raise LesionError(f"backend={backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "local" and (address is not None or shards is not None or resume is not None):
        raise LesionError(
            "address=, shards= and resume= shard a sweep over Ray; expected backend='ray' with them"
        )
    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int) or shards < 1):
        raise LesionError(f"shards={shards!r}; expected a positive int")


def evaluate(
    runner: Runner,
    lesions: Sequence[Lesion],
    *,
    backend: Backend = "local",
    address: str | None = None,
    shards: int | None = None,
    resume: str | Path | None = None,
    threads: int = 1,
    bar=None,
) -> dict[str, np.ndarray]:
    """Metric values of the fitted ``lesions``: in this process, or sharded over Ray. The options were
    checked where they entered (``sweep``, ``unit_table``: ``check_backend``), before any work."""
    if backend == "local" or not lesions:
        return evaluate_lesions(runner, lesions, bar=bar)
    return _on_ray(runner, list(lesions), address, shards, resume, threads, bar)


def _on_ray(runner, lesions, address, shards, resume, threads, bar) -> dict[str, np.ndarray]:
    from lesion.backends.ray import RayBackend

    store = _Store(Path(resume), _fingerprint(runner, lesions)) if resume is not None else None
    count = shards or (store.count() if store is not None else None)
    with contextlib.ExitStack() as stack:

        def connect():  # Ray starts only when a shard is left to compute or the count needs the cluster
            return stack.enter_context(RayBackend(address, cpus=os.cpu_count()).session(1)).ray

        ray = None
        if count is None:
            ray = connect()
            count = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        ranges = _ranges(len(lesions), min(count, len(lesions)))
        parts: dict[int, dict[str, Any]] = {}
        if store is not None:
            store.plan(len(ranges))
            for i, (a, b) in enumerate(ranges):
                got = store.load(i, b - a)
                if got is not None:
                    parts[i] = got
                    if bar is not None:
                        bar.update(b - a)
        todo = [i for i in range(len(ranges)) if i not in parts]
        if todo:
            _compute(ray or connect(), runner, lesions, ranges, todo, threads, parts, store, bar)
    return _merge(runner, [parts[i] for i in range(len(ranges))])


def _compute(ray, runner, lesions, ranges, todo, threads, parts, store, bar) -> None:
    """Send the ``todo`` ranges to the cluster; keep (and store) each shard as it returns."""
    from lesion.backends.ray import cancel_unfinished

    try:
        sites = list(runner.sites.values())
        shared = ray.put((runner.model, sites, runner.data, runner.metric, lesions))
    except Exception as exc:  # any pickling failure means the same to the user
        raise LesionError(
            f"backend='ray' sends the model, data and metric to the cluster and could not serialise "
            f"them ({type(exc).__name__}: {exc}); expected picklable objects (tensors, dicts, a "
            "DataLoader over a picklable dataset)"
        ) from exc
    gpus = 1 if runner.device.type == "cuda" else 0  # the model unpickles onto its own device
    task = ray.remote(_shard).options(num_cpus=threads, num_gpus=gpus, max_retries=3)
    options = {"batch_size": runner.batch_size, "engine": runner.use_engine, "precision": runner.precision}
    pending = {task.remote(shared, *ranges[i], options, threads): i for i in todo}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])  # finished, whatever its outcome: never to be cancelled
            parts[i] = ray.get(done[0])
            if store is not None:
                store.save(i, parts[i])
            if bar is not None:
                bar.update(ranges[i][1] - ranges[i][0])
    except BaseException:  # a failed shard or Ctrl-C: the other shards stop computing on the cluster
        cancel_unfinished(ray, list(pending))
        raise


def _ranges(n: int, k: int) -> list[tuple[int, int]]:
    """``k`` contiguous, near-equal ranges of ``range(n)`` (as ``np.array_split``)."""
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


def _shard(shared, start: int, stop: int, options: dict, threads: int) -> dict[str, Any]:
    """On a worker: the values of lesions[start:stop] and what the engines did for them."""
    torch.set_num_threads(threads)
    model, sites, data, metric, lesions = shared
    runner = Runner(model, data, sites, metric=metric, **options)
    values = evaluate_lesions(runner, lesions[start:stop])
    eng = runner._engine
    return {
        "values": {k: np.asarray(v) for k, v in values.items()},
        "served": dict(runner.served),
        "fallbacks": dict(runner.fallbacks),
        "deviation": dict(runner.deviation),
        "examples": int(getattr(eng, "examples", 0) or 0),
        "computed": int(getattr(eng, "computed", 0) or 0),
    }


def _merge(runner: Runner, parts: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Concatenate the shards' values in order; fold what their engines did into ``runner``."""
    for p in parts:
        for k, v in p["served"].items():
            runner.served[k] = runner.served.get(k, 0) + int(v)
        for k, v in p["fallbacks"].items():
            runner.fallbacks.setdefault(k, v)
        for k, v in p["deviation"].items():
            runner.deviation[k] = max(runner.deviation.get(k, 0.0), float(v))
    examples = sum(int(p["examples"]) for p in parts)
    runner.shard_skip = None if not examples else 1 - sum(int(p["computed"]) for p in parts) / examples
    return {k: np.concatenate([p["values"][k] for p in parts]) for k in parts[0]["values"]}


def _fingerprint(runner: Runner, lesions: Sequence[Lesion]) -> str:
    """What makes two sweeps the same: parameters and buffers, lesions, metric, intact values, n."""
    h = hashlib.sha256()
    for name, t in (*runner.model.named_parameters(), *runner.model.named_buffers()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps([str(les) for les in lesions]).encode())
    m = runner.metric
    h.update(f"{type(m).__module__}.{type(m).__qualname__}".encode())
    for k, v in sorted(vars(m).items()):  # its settings (a metric holds no sums until reset)
        v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
        h.update(k.encode() + (v.tobytes() if isinstance(v, np.ndarray) else repr(v).encode()))
    for k, v in sorted(runner.intact.items()):
        h.update(k.encode() + np.asarray(v, dtype=np.float64).tobytes())
    h.update(str(runner.n).encode())
    return h.hexdigest()


def drop_shards(spread: dict) -> None:
    """Remove a ray sweep's resume directory once the analysis that needed it is written."""
    if spread.get("resume") is not None:
        shutil.rmtree(spread["resume"], ignore_errors=True)


class _Store:
    """Finished shards of one sweep in a directory, each verified by its SHA-256 before reuse."""

    def __init__(self, folder: Path, fingerprint: str):
        self.folder, self.fingerprint = folder, fingerprint
        if folder.exists() and not folder.is_dir():
            raise LesionError(f"resume={str(folder)!r} is a file; expected a directory for the shards")

    def _index(self) -> dict[str, Any] | None:
        path = self.folder / INDEX
        if not path.exists():
            return None
        try:
            index = json.loads(path.read_text())
            if not isinstance(index, dict) or not isinstance(index.get("shards"), dict):
                raise ValueError("not an index")
            return index
        except (ValueError, UnicodeDecodeError):
            raise LesionError(
                f"{path} is not a shard index; expected the {INDEX} a ray sweep wrote"
            ) from None

    def count(self) -> int | None:
        """The shard count of this very sweep's earlier run here, if there was one."""
        index = self._index()
        ok = index is not None and index.get("fingerprint") == self.fingerprint
        return int(index["count"]) if ok else None

    def plan(self, count: int) -> None:
        index = self._index()
        if index is None:
            if self.folder.exists() and any(self.folder.iterdir()):
                raise LesionError(
                    f"resume directory {self.folder} holds files but no {INDEX}; expected an empty or new "
                    "directory (it is not cleared for you)"
                )
            self.folder.mkdir(parents=True, exist_ok=True)
            index = {"fingerprint": self.fingerprint, "count": count, "shards": {}}
            self._write(index)
        elif index.get("fingerprint") != self.fingerprint or index.get("count") != count:
            raise LesionError(
                f"{self.folder} holds shards of another sweep (a different model, data, lesions, metric or "
                f"shard count: {index.get('count')} shards there, {count} here); expected the directory of "
                "this very sweep, or a new one"
            )
        self.index = index

    def load(self, i: int, rows: int) -> dict[str, Any] | None:
        entry = self.index["shards"].get(str(i))
        path = self.folder / f"shard-{i:05d}.npz"
        if entry is None or not path.exists():
            return None
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            return None  # tampered or torn: recomputed
        with np.load(io.BytesIO(data), allow_pickle=False) as z:  # the very bytes that were hashed
            values = {k.removeprefix("v_"): z[k] for k in z.files if k.startswith("v_")}
        if not values or any(len(v) != rows for v in values.values()):
            return None
        return {"values": values, **{k: entry[k] for k in META}}

    def save(self, i: int, part: dict[str, Any]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **{f"v_{k}": v for k, v in part["values"].items()})
        data = buf.getvalue()
        atomic_write(self.folder / f"shard-{i:05d}.npz", lambda tmp: tmp.write_bytes(data))
        meta = {k: part[k] for k in META}
        self.index["shards"][str(i)] = {"sha256": hashlib.sha256(data).hexdigest(), **meta}
        self._write(self.index)

    def _write(self, index: dict[str, Any]) -> None:
        atomic_write(self.folder / INDEX, lambda tmp: tmp.write_text(json.dumps(index, indent=1)))
