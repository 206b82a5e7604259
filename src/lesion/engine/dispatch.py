"""Where the engine serves a sweep: single-unit lesions by layer, and cumulative orders.

Each use is checked first against the slow path on this sweep's data (``CHECKS`` lesions per layer, the
last ``CHECKS`` counts of every cumulative order); a disagreement or an unsupported model sends the work
to the slow path and records why in ``runner.fallbacks``.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator, Sequence

import numpy as np
import torch

from lesion.core.lesions import Lesion, replacement_key
from lesion.core.runner import CHECKS, Mismatch, Runner
from lesion.core.sites import Site
from lesion.engine.batched import engine_of
from lesion.engine.prefixserve import prefix_groups, prefix_served
from lesion.util.modules import eval_mode

# the last block's MLP neurons through the final norm and the unembedding in closed form (lesion.engine.
# lastblock; checked like every fast path); False leaves them to the module-prefix engine
CLOSED_FORM = True


def engine_fill(runner: Runner, lesion: Lesion) -> tuple[str, int, torch.Tensor] | None:
    """(layer, unit, fill) when ``lesion`` is one unit, at every position, with a per-unit constant."""
    r = lesion.replacement
    units = lesion.units
    if not r.constant or units.positional or len(units) != 1:
        return None
    ((layer, idx),) = units.items()
    if idx is None or len(idx) != 1:
        return None
    return layer, idx[0], r.fill(runner.sites[layer], lesion)


def single_unit_groups(
    runner: Runner, lesions: Sequence[Lesion], *, bar=None
) -> Iterator[tuple[list[int], dict]]:
    """Yield (lesion positions, metric values) for groups of single-unit lesions the engine evaluated.

    A layer with ``CHECKS`` lesions or fewer is left to the slow path: its check would re-run every one
    of them there anyway, so the engine is not even built for it."""
    if not runner.use_engine:
        return
    from lesion.engine.batched import _plain

    groups = fill_groups(runner, lesions, _plain)  # the graph engine serves channel sites only
    if not groups or engine_of(runner) is None:
        return
    for (layer, _), members in groups.items():
        values = _engine_layer(runner, layer, members, [lesions[i] for i, _, _ in members], bar)
        if values is not None:
            yield [i for i, _, _ in members], values


def fill_groups(
    runner: Runner, lesions: Sequence[Lesion], serves: Callable[[Site], bool], skip: Container[int] = ()
) -> dict[tuple, list[tuple[int, int, torch.Tensor]]]:
    """Single-unit constant lesions (``engine_fill``) on sites ``serves`` accepts, positions in ``skip``
    aside, grouped by (layer, replacement) as ``[(position, unit, fill)]``. Only groups of more than
    ``CHECKS`` lesions are kept: a smaller group's check would re-run every one of them on the slow path."""
    groups: dict[tuple, list[tuple[int, int, torch.Tensor]]] = {}
    for i, les in enumerate(lesions):
        if i in skip or not all(n in runner.sites and serves(runner.sites[n]) for n in les.units):
            continue
        got = engine_fill(runner, les)
        if got is not None:
            groups.setdefault((got[0], replacement_key(les.replacement)), []).append((i, got[1], got[2]))
    return {key: members for key, members in groups.items() if len(members) > CHECKS}


def _engine_layer(runner, layer, members, lesions, bar) -> dict | None:
    from lesion.engine import Unsupported

    if layer in runner.fallbacks:
        return None
    fill = members[0][2]
    if not all(torch.equal(m[2], fill) for m in members[1:]):
        fill = torch.stack([m[2] for m in members])  # per-lesion constants: one row each
    units = [u for _, u, _ in members]
    metric = runner.fresh(len(units))
    shown = [0]

    def progress(examples: int) -> None:  # the bar counts lesions: all of them, a share per chunk
        if bar is not None and runner.n:
            now = min(len(units), len(units) * examples // runner.n)
            bar.update(now - shown[0])
            shown[0] = now

    try:
        with torch.no_grad(), eval_mode(runner.model), runner.autocast():
            f = fill if fill.ndim == 1 else _rows(fill, units)
            engine_of(runner).single_units(layer, units, _or_none(f), metric, progress=progress)
        if bar is not None:
            bar.update(len(units) - shown[0])
            shown[0] = len(units)
        values = metric.compute()
        ref = runner.run(lesions[:CHECKS])
        runner.agree(ref, {k: v[:CHECKS] for k, v in values.items()})
    except (Unsupported, Mismatch) as exc:
        runner.fallbacks[layer] = str(exc)
        if bar is not None:
            bar.update(-shown[0])
        return None
    runner.served["graph"] += len(units)
    return values


def _rows(fills: torch.Tensor, units: list[int]) -> torch.Tensor:
    """A (width,) fill vector from per-lesion rows: lesion j's own constant at its own unit."""
    out = fills[0].clone()
    for j, u in enumerate(units):
        out[u] = fills[j, u]
    return out


def _or_none(fill: torch.Tensor) -> torch.Tensor | None:
    return None if not bool(fill.any()) else fill


def cumulative(runner: Runner, seq: Sequence[Lesion], counts: Sequence[int]) -> dict[str, np.ndarray]:
    """Metric values after deleting the first k units of ``seq`` (single-unit lesions), per k in counts.

    ``seq`` holds one single-unit lesion per step with a shared replacement; its first k steps are
    ``Lesion(first k units, replacement)``.
    """
    from lesion.engine import Unsupported
    from lesion.engine.cumulative import cumulative as on_engine

    eng = engine_of(runner)
    fills = [engine_fill(runner, les) for les in seq]
    key = "cumulative"
    if eng is not None and key not in runner.fallbacks and all(f is not None for f in fills):
        layers = {f[0] for f in fills}
        by_layer = {n: next(f[2] for f in fills if f[0] == n) for n in layers}
        zero = all(not bool(v.any()) for v in by_layer.values())
        metric = runner.fresh(len(counts))
        try:
            with torch.no_grad(), eval_mode(runner.model), runner.autocast():
                on_engine(eng, [(f[0], f[1]) for f in fills], counts, None if zero else by_layer, metric)
            values = metric.compute()
            checks = list(range(len(counts)))[-CHECKS:]
            ref = runner.run([first_k(seq, counts[j]) for j in checks])
            runner.agree(ref, {k: v[checks] for k, v in values.items()})
            runner.served["graph"] += len(counts)
            return values
        except (Unsupported, Mismatch) as exc:
            runner.fallbacks[key] = str(exc)
    steps = [first_k(seq, k) for k in counts]
    if sum(prefix_served(runner, les) for les in steps) > CHECKS:
        values = evaluate_rest(runner, steps[::-1], {})  # reversed: the checks re-run the longest deletions
        return {k: v[::-1].copy() for k, v in values.items()}
    return runner.run(steps)


def evaluate_lesions(runner: Runner, lesions: Sequence[Lesion], *, bar=None) -> dict[str, np.ndarray]:
    """Metric values (n, ...) of ``lesions``: single-unit constant lesions on the engine (checked)."""
    done: dict[int, dict[str, np.ndarray]] = {}
    for idxs, values in single_unit_groups(runner, lesions, bar=bar):
        scatter(done, idxs, values)
    for idxs, values in closed_groups(runner, lesions, done, bar=bar):
        scatter(done, idxs, values)
    return evaluate_rest(runner, lesions, done, bar=bar)


def closed_groups(runner: Runner, lesions: Sequence[Lesion], done: dict, *, bar=None):
    """(positions, values) of single-unit constant lesions of a last-block MLP site, in closed form
    (``lesion.engine.lastblock``), each group checked on ``CHECKS`` lesions against the hooked model."""
    from lesion.engine import Unsupported
    from lesion.engine.lastblock import closed_form_units, plan_last_block

    if not CLOSED_FORM or not runner.use_engine or runner.precision != "fp32":
        return
    plans, memo = runner._closed, runner._closed_memo

    def serves(s: Site) -> bool:  # only (position, neuron) MLP sites have the closed form
        neuron = not s.heads and s.group == 1 and s.hook == "output" and len(s.shape) == 2
        return neuron and plans.get(s.name, 1) is not None and f"closed:{s.name}" not in runner.fallbacks

    for (layer, _), members in fill_groups(runner, lesions, serves, skip=done).items():
        if layer not in plans:
            try:
                probe = next(iter(runner.batches())).slice(0, 2)
                plans[layer] = plan_last_block(runner.model, runner.sites[layer], probe, memo)
            except Unsupported:
                plans[layer] = None
        if plans[layer] is None:
            continue
        fill = _rows(torch.stack([m[2] for m in members]), [u for _, u, _ in members])
        if plans[layer].gated and bool(fill.any()):
            continue  # a gated MLP has a closed form for the zero replacement only: the prefix engine's
        metric = runner.fresh(len(members))
        chosen = [lesions[i] for i, _, _ in members]
        try:
            with torch.no_grad(), eval_mode(runner.model):
                closed_form_units(plans[layer], runner.model, runner.batches, [u for _, u, _ in members],
                                  _or_none(fill), metric, runner.metric.needs_intact)  # fmt: skip
            values = metric.compute()
            runner.agree(runner.run(chosen[:CHECKS]), {k: v[:CHECKS] for k, v in values.items()})
        except (Unsupported, Mismatch) as exc:
            runner.fallbacks[f"closed:{layer}"] = str(exc)
            continue
        runner.served["closed"] = runner.served.get("closed", 0) + len(members)
        if bar is not None:
            bar.update(len(members))
        yield [i for i, _, _ in members], values


def evaluate_rest(
    runner: Runner, lesions: Sequence[Lesion | None], done: dict[int, dict], *, bar=None
) -> dict[str, np.ndarray]:
    """Metric values (n, ...) of ``lesions``: ``done`` holds those already evaluated (by position); the
    module-prefix engine takes the rest where it serves them, the slow path what is left."""
    rest = [i for i in range(len(lesions)) if i not in done]
    for idxs, values in prefix_groups(runner, [lesions[i] for i in rest], bar=bar):
        scatter(done, [rest[j] for j in idxs], values)
    rest = [i for i in range(len(lesions)) if i not in done]
    if rest:
        scatter(done, rest, runner.run([lesions[i] for i in rest], bar=bar))
    return {k: np.stack([done[i][k] for i in range(len(lesions))]) if lesions else runner.intact[k][:0]
            for k in runner.intact}  # fmt: skip


def scatter(done: dict[int, dict], positions: Sequence[int], values: dict[str, np.ndarray]) -> None:
    """Row j of ``values`` is the lesion at ``positions[j]``: file it under that position in ``done``."""
    for j, i in enumerate(positions):
        done[i] = {k: v[j] for k, v in values.items()}


def cumulative_orders(
    runner: Runner, seqs: Sequence[Sequence[Lesion]], counts: Sequence[int]
) -> list[dict[str, np.ndarray]]:
    """``cumulative`` for several orders of the same length at once (the graph engine runs them side by
    side, one set of kernels per step for all); each order is checked on its last ``CHECKS`` counts."""
    from lesion.engine import Unsupported
    from lesion.engine.cumulative import cumulative_many

    eng = engine_of(runner)
    key = "cumulative"
    fills = [[engine_fill(runner, les) for les in seq] for seq in seqs]
    usable = (
        eng is not None and eng.side_by_side and key not in runner.fallbacks and len(seqs) > 1
        and len({len(q) for q in seqs}) == 1 and all(f is not None for fs in fills for f in fs)
        and len({replacement_key(q[0].replacement) for q in seqs}) == 1
    )  # fmt: skip
    if usable:
        by_layer = {f[0]: f[2] for fs in fills for f in fs}
        zero = all(not bool(v.any()) for v in by_layer.values())
        n, m = len(seqs), len(counts)
        metric = runner.fresh(n * m)
        try:
            with torch.no_grad(), eval_mode(runner.model), runner.autocast():
                orders = [[(f[0], f[1]) for f in fs] for fs in fills]
                cumulative_many(eng, orders, counts, None if zero else by_layer, metric)
            values = metric.compute()  # count-major: row j * n + r
            out = [{k: v[r::n] for k, v in values.items()} for r in range(n)]
            checks = list(range(m))[-CHECKS:]
            for seq, got in zip(seqs, out, strict=True):
                ref = runner.run([first_k(seq, counts[j]) for j in checks])
                runner.agree(ref, {k: v[checks] for k, v in got.items()})
            runner.served["graph"] += n * m
            return out
        except (Unsupported, Mismatch) as exc:
            runner.fallbacks[key] = str(exc)
    return [cumulative(runner, seq, counts) for seq in seqs]


def first_k(seq: Sequence[Lesion], k: int) -> Lesion | None:
    """One lesion deleting the first ``k`` units of a deletion order ``seq`` together (None for k = 0:
    intact)."""
    if k == 0:
        return None
    units = [u for les in seq[:k] for u in les.units.units()]
    return Lesion(units, seq[0].replacement)
