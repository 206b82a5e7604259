"""``lesion reproduce``: the paper's figures and the follow-ups' measurements, as one resumable run.

The figures (``lesion.experiments.figures``) name their jobs; the runner computes what the run directory
does not hold yet; then every figure's tables, plot and claims are rebuilt from the finished jobs, and the
run directory gets ``manifest.json``, ``models/``, ``tables/``, ``figures/``, ``claims.json``,
``report.html`` and ``report.md``. Everything but ``jobs/`` is derived and rewritten atomically each time.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import time
import uuid
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from lesion.errors import LesionError
from lesion.experiments import Job, Store, run, write_json_atomic
from lesion.experiments.backends import get_backend
from lesion.experiments.figures import Figure, check_sizes, registered
from lesion.experiments.figures.generalisation import F3, F4C
from lesion.experiments.jobs import write_table
from lesion.experiments.profiles import Profile, get_profile
from lesion.report import Section, write_html, write_markdown
from lesion.util.progress import progress_bar


def select(only: Sequence[str] | str | None) -> list[Figure]:
    """The figures named in ``only`` (ids such as ``F1``, ``F4b``, ``zhou-class-drops``), or all."""
    if only is None:
        return list(registered())
    names = [s.strip() for s in (only.split(",") if isinstance(only, str) else only) if s.strip()]
    alias = {"F4b": "F4a", "F4a-sgd": "F4a", "F7-conv": "F7"}
    known = {f.id: f for f in registered()}
    bad = [n for n in names if alias.get(n, n) not in known]
    if bad or not names:
        raise LesionError(
            f"unknown figure {', '.join(bad) or '(none)'}; expected some of {', '.join([*known, *alias])}"
        )
    return [known[i] for i in dict.fromkeys(alias.get(n, n) for n in names)]


def reproduce(
    profile: str | Profile = "quick",
    *,
    only: Sequence[str] | str | None = None,
    out: str | Path | None = None,
    workers: int = 1,
    threads: int = 1,
    progress: bool = False,
    backend: str = "local",
    address: str | None = None,
    verify: bool = False,
    connect_timeout: float = 30.0,
) -> dict[str, Any]:
    """Run (or resume) a reproduction into ``out`` (default ``runs/<profile>``); returns the manifest.

    Finished jobs are reused only after their files hash to what their job.json records; ``verify``
    also hashes every other job in the run directory. A damaged job is recomputed with a warning.

    ``backend="ray"`` runs the jobs as tasks on the Ray cluster at ``address`` (default: a local Ray
    instance with ``workers * threads`` CPUs; an address that accepts no connection within
    ``connect_timeout`` seconds is an error); the tables are the same on every backend.
    """
    start, load_start = time.perf_counter(), _load()
    p = get_profile(profile) if isinstance(profile, str) else profile
    figures = select(only)
    check_sizes(p)
    chosen = get_backend(backend, workers=workers, threads=threads, address=address,
                         connect_timeout=connect_timeout)  # fmt: skip
    _check_data(p)
    out = Path(out) if out is not None else Path("runs") / p.name
    store = Store(out)  # holds the run directory's lock until the run ends
    if verify:
        store.verify_all()
    named = {f.id: f.jobs(p) for f in figures}
    jobs = [j for js in named.values() for j in js.values()]
    done = run(jobs, store, progress=progress, workers=workers, threads=threads, backend=chosen)
    sections, claims, tables = [], [], {}
    for f in progress_bar(figures, "figures", progress):
        outcome = f.analyse(p, {name: store.path(j.key) for name, j in named[f.id].items()})
        for name, df in outcome.tables.items():
            tables[f"{f.id}_{name}"] = df
        png = f.draw(outcome.tables, _staging(out, "figures") / f.id)[0]
        sections.append(Section(f.id, f.title, f.source, png, outcome.claims, _links(outcome.tables)))
        claims += outcome.claims
    _publish_dir(out, "tables", lambda d: [write_table(df, d / f"{k}.parquet") for k, df in tables.items()])
    _publish_staged(out, "figures")
    sections = [Section(s.id, s.title, s.source, out / "figures" / s.png.name, s.claims, s.links)
                for s in sections]  # fmt: skip
    models = _link_models(out, store, jobs)
    manifest = _manifest(p, figures, named, store, done, start, workers, threads, models)
    manifest["machine"]["load"] = {"start": load_start, "end": _load()}
    write_json_atomic(out / "claims.json", claims)
    _atomic_text(out / "report.html", lambda path: write_html(path, sections, manifest))
    _atomic_text(out / "report.md", lambda path: write_markdown(path, sections, manifest))
    manifest["timing"]["wall_seconds"] = round(time.perf_counter() - start, 2)
    manifest["machine"]["load"] = {"start": load_start, "end": _load()}
    write_json_atomic(out / "manifest.json", manifest)
    return manifest


def _links(tables: dict) -> list[tuple[str, str]]:
    """A study's table ``links`` (columns ``text``, ``href``: an address relative to the run directory,
    such as an atlas in ``jobs/<key>/``) becomes links under its figure in the report."""
    df = tables.get("links")
    if df is None or not {"text", "href"} <= set(df.columns):
        return []
    return [(str(t), str(h)) for t, h in zip(df["text"], df["href"], strict=True)]


def _load() -> list[float]:
    """The machine's 1, 5 and 15-minute load averages (what else competed for the CPUs)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


def _check_data(p: Profile) -> None:
    """Load the profile's datasets once up front: a missing file fails now, not in a worker later; the
    same for a GPU that is not there."""
    from lesion.data import load_dataset

    if p.device != "cpu":
        import torch

        try:
            torch.empty(1, device=p.device)
        except (RuntimeError, AssertionError) as e:
            raise LesionError(
                f"device={p.device!r} is not usable here ({e}); expected cpu or a visible GPU"
            ) from e

    for name in dict.fromkeys((p.dataset, p.conv_dataset)):
        load_dataset(name, root=p.root)


def _staging(out: Path, name: str) -> Path:
    d = out / f".{name}.staging"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _publish_dir(out: Path, name: str, write) -> None:
    shutil.rmtree(out / f".{name}.staging", ignore_errors=True)
    write(_staging(out, name))
    _publish_staged(out, name)


def _publish_staged(out: Path, name: str) -> None:
    """Swap ``.name.staging`` in for ``name``: readers see the old directory or the new one, never half."""
    new, final = out / f".{name}.staging", out / name
    old = out / f".{name}.old-{uuid.uuid4().hex[:6]}"
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _atomic_text(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _link_models(out: Path, store: Store, jobs: list[Job]) -> dict[str, str]:
    """``models/<readable name>.safetensors``: hard links to every trained model of the run."""
    from lesion.experiments.runner import plan

    def write(d: Path) -> None:
        for j in plan(jobs):
            files = {}
            if j.kind == "train":
                files = {f"{_model_name(j)}.safetensors": store.path(j.key) / "model.safetensors"}
            elif j.kind == "grok":  # T2: the final model and every checkpoint
                from lesion.experiments.jobs_vit_grokking import grok_model_files

                files = grok_model_files(j.params, j.key, store.path(j.key))
            for name, src in files.items():
                dst = d / name
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copyfile(src, dst)
                names[dst.name] = j.key

    names: dict[str, str] = {}
    _publish_dir(out, "models", write)
    return names


def _model_name(job: Job) -> str:
    p = job.params
    arch = p["arch"]
    shape = "x".join(map(str, arch.get("widths", arch.get("channels", []))))
    shape = shape or (f"{arch['n_layer']}x{arch['d_model']}" if "d_model" in arch else "paper")
    extra = "".join(f"_{k}{v:g}" for k, v in (("dropout", arch.get("dropout", 0)),) if v)
    extra += "" if arch.get("batchnorm", arch["kind"] != "convnet") else "_nobn"
    extra += f"_alpha{p['train']['select_reg']:g}" if p["train"].get("select_reg") else ""
    return (
        f"{arch['kind']}{shape}_{p['dataset']}_corrupt{p['corrupt']:g}{extra}_seed{p['seed']}_{job.key[:8]}"
    )


def _manifest(p, figures, named, store, done, start, workers, threads, models) -> dict[str, Any]:
    figs_of: dict[str, list[str]] = {}
    for fid, js in named.items():
        for j in js.values():
            for dep in _closure(j):
                figs_of.setdefault(dep.key, [])
                if fid not in figs_of[dep.key]:
                    figs_of[dep.key].append(fid)
    computed = set(done.computed)
    devices: dict[str, str] = {}
    timing = [
        {
            "key": k,
            "kind": store.spec(k)["kind"],
            "seconds": store.spec(k).get("seconds", 0.0),
            "device": _device(store, k, devices),
            "computed_now": k in computed,
            "figures": figs_of.get(k, []),
        }
        for k in done.paths
    ]
    return {
        "profile": p.as_dict() | {"sizes": {f.id: f.sizes_in(p) for f in figures if f.sizes}},
        "figures": [f.id for f in figures],
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "workers": workers,
        "threads": threads,
        "backend": done.backend,
        "seeds": {
            "networks": list(p.seeds),
            "ensemble": [100 + i for i in range(F3.size(p, "ensemble"))],
            "sweep": list(F4C.size(p, "seeds")),
            "conv": list(p.conv_seeds),
            "orders": 0,
        },
        "jobs": {"total": len(done.paths), "computed": len(done.computed), "reused": len(done.reused)},
        "models": models,
        "timing": {
            "wall_seconds": round(time.perf_counter() - start, 2),
            "job_seconds_total": round(sum(t["seconds"] for t in timing), 2),
            "jobs": timing,
        },
    }


def _device(store: Store, key: str, memo: dict[str, str]) -> str:
    """Where a job ran: a training job's device; a measuring job's is that of the model it reads."""
    if key not in memo:
        spec = store.spec(key)
        if spec["kind"] == "train":
            memo[key] = spec["params"].get("train", {}).get("device", "cpu")
        else:
            found = [_device(store, d, memo) for d in spec.get("deps", {}).values()]
            memo[key] = next((d for d in found if d != "cpu"), "cpu")
    return memo[key]


def _closure(job: Job) -> list[Job]:
    out = [job]
    for d in job.deps.values():
        out += _closure(d)
    return out


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("lesion", "torch", "numpy", "pandas", "scipy", "matplotlib", "pyarrow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
