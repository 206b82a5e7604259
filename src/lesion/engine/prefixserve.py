"""Which lesions the module-prefix engine (``lesion.engine.prefix``) serves in a sweep, and how: sites
sharing passes, each site's group checked against the slow path on this sweep's data (on a spread subset
of every batch for per-unit constant replacements), a group the engine cannot run retried alone. Called
by ``lesion.engine.dispatch`` for the lesions the graph engine and the closed form left."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from lesion.core.lesions import Lesion
from lesion.core.runner import CHECKS, Mismatch, Runner
from lesion.engine.batched import _plain, engine_of
from lesion.util.modules import eval_mode

# the module-prefix engine's checks re-run their lesions on a spread subset of every batch
# (lesion.core.runner.check_examples) and compare them with the engine's numbers on the same examples;
# False re-runs them on every example
SUBSET_CHECKS = True
CACHE_BYTES = 512 << 20  # recorded outputs the module-prefix engine keeps at once for sites sharing passes


def prefix_served(runner: Runner, lesion: Lesion | None, *, plan: bool = True) -> bool:
    """Whether the module-prefix engine may take ``lesion``: a site the graph engine cannot serve (or a
    model it cannot trace), a replacement computed per unit (no whole-site edit, one draw). With
    ``plan=False`` the graph engine is not consulted (nor traced): the cheap half of the answer."""
    if (
        lesion is None
        or not lesion.units
        or not runner.use_engine
        or any(n not in runner.sites for n in lesion.units)
    ):
        return False
    r = lesion.replacement
    if r.edit is not None or r.repeats > 1:
        return False
    if not plan:
        return True
    # the graph engine (or the slow path, as before) serves channel sites of traced models
    return engine_of(runner) is None or not all(_plain(runner.sites[n]) for n in lesion.units)


def prefix_groups(runner: Runner, lesions: Sequence[Lesion], *, bar=None) -> Iterator[tuple[list[int], dict]]:
    """(lesion positions, metric values) for lesions the module-prefix engine evaluated, by first site.

    Sites whose recorded outputs fit ``CACHE_BYTES`` together share their passes (one intact capture per
    batch serves them all); each site's group is then checked on this sweep's data: its first ``CHECKS``
    lesions re-run on the slow path, and a disagreement sends that group to the slow path with the reason
    in ``runner.fallbacks``. A group the engine cannot run is retried alone, to find which one it is.
    """
    from lesion.engine import Unsupported
    from lesion.engine.prefix import PrefixEngine

    groups: dict[str, list[int]] = {}
    for i, les in enumerate(lesions):
        if prefix_served(runner, les, plan=False):
            first = min(les.units, key=lambda n: runner.sites[n].order)
            if f"prefix:{first}" not in runner.fallbacks:
                groups.setdefault(first, []).append(i)
    # a site with CHECKS lesions or fewer: its check would re-run all of them on the slow path
    groups = {f: g for f, g in groups.items() if len(g) > CHECKS}
    groups = {f: [i for i in g if prefix_served(runner, lesions[i])] for f, g in groups.items()}
    groups = {f: g for f, g in groups.items() if len(g) > CHECKS}
    if not groups:
        return
    if runner._prefix is None:
        runner._prefix = PrefixEngine(runner.model, runner.batches, list(runner.sites.values()))
    eng = runner._prefix
    firsts = sorted(groups, key=lambda n: runner.sites[n].order)
    try:
        with torch.no_grad(), eval_mode(runner.model):
            budget = CACHE_BYTES if runner.cache_bytes is None else min(CACHE_BYTES, runner.cache_bytes)
            chunks = eng.share([runner.sites[f] for f in firsts], budget)
    except Unsupported:
        chunks = [[f] for f in firsts]
    for chunk in chunks:
        members = [(runner.sites[f], [lesions[i] for i in groups[f]]) for f in chunk]
        values = _prefix_run(runner, eng, members, bar)
        if values is None:  # find the site the engine cannot run: each alone
            values = [None] if len(chunk) == 1 else [_alone(runner, eng, m, bar) for m in members]
        for first, got in zip(chunk, values, strict=True):
            chosen = [lesions[i] for i in groups[first]]
            try:
                if got is None:
                    raise Unsupported(eng.last_error)
                got, sub = got
                if sub is not None:  # on the spread subset of every batch the engine also scored
                    runner.agree(runner.run(chosen[:CHECKS], subset=True), sub, eng.checked)
                else:
                    runner.agree(runner.run(chosen[:CHECKS]), {k: v[:CHECKS] for k, v in got.items()})
            except (Unsupported, Mismatch) as exc:
                runner.fallbacks[f"prefix:{first}"] = str(exc)
                if bar is not None and got is not None:
                    bar.update(-len(chosen))
                continue
            runner.served["prefix"] += len(chosen)
            yield groups[first], got


def _alone(runner: Runner, eng, member, bar) -> dict | None:
    got = _prefix_run(runner, eng, [member], bar)
    return None if got is None else got[0]


def _prefix_run(runner: Runner, eng, members, bar) -> list[dict] | None:
    """Each member's (site, lesions) values from shared passes, or None (``eng.last_error`` says why)."""
    from lesion.engine import Unsupported

    sizes = [len(chosen) for _, chosen in members]
    offsets = [sum(sizes[:j]) for j in range(len(sizes))]
    metric = runner.fresh(sum(sizes))
    # each member's first CHECKS lesions also scored on a spread subset of the examples, for a check that
    # re-runs only those on the slow path (constant replacements: nothing drawn from other examples)
    firsts = [les for _, chosen in members for les in chosen[:CHECKS]]
    subset = SUBSET_CHECKS and all(les.replacement.constant for les in firsts)
    counts = [min(CHECKS, n) for n in sizes]
    check = (runner.fresh(sum(counts)), counts) if subset else None
    shown, done = [0], [0.0]  # whole lesions shown on the bar; lesions x (share of the examples) done

    def progress(k: int, examples: int) -> None:  # every batch moves the bar by its share of the data
        done[0] += k * examples / runner.n if runner.n else k
        step = min(int(done[0] + 1e-6), sum(sizes)) - shown[0]
        shown[0] += step
        if bar is not None and step:
            bar.update(step)

    try:
        with torch.no_grad(), eval_mode(runner.model), runner.autocast():
            eng.evaluate(members, metric, offsets=offsets, progress=progress, check=check)
        values = metric.compute()
        checked = check[0].compute() if check is not None else None
    except Unsupported as exc:
        eng.last_error = str(exc)
        if bar is not None:
            bar.update(-shown[0])
        return None
    if bar is not None and shown[0] < sum(sizes):  # the rounding left over
        bar.update(sum(sizes) - shown[0])
    out = []
    for j, (o, n) in enumerate(zip(offsets, sizes, strict=True)):
        sub = None
        if checked is not None:
            at = sum(counts[:j])
            sub = {k: v[at : at + counts[j]] for k, v in checked.items()}
        out.append(({k: v[o : o + n] for k, v in values.items()}, sub))
    return out
