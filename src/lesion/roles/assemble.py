"""``roles(model, data)``: the card of every unit, from recipes that already exist (``collect_stats``,
``selectivity_index``, ``mutual_information``, ``sweep``) and the few new ones in this package.

Stages: statistics and top examples (streamed); single-unit effects under zero and mean (``sweep``,
fast engine checked against the slow path); output pushes (weights); pairs and compensation for the
units with the largest effects; explanations and their simulation scores; the causal (necessity) test
per layer and class; memorisation on the training data where labels were corrupted. The lesion stages
can be kept in a folder (``keep=``) and are then reused by a later run with the same settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from lesion.analyses.sweep import sites_for
from lesion.core.batch import Data, batches, first_batch, reusable
from lesion.core.sites import Site
from lesion.core.stats import collect_stats, forward
from lesion.core.units import Unit
from lesion.errors import DataError, LesionError
from lesion.roles import fill, rules, stages, tokens
from lesion.roles.activity import activity, head_ranges
from lesion.roles.card import CARD_FIELDS, Card
from lesion.roles.keep import Keep, Laps, digest
from lesion.util.progress import progress_bar


@dataclass
class Atlas:
    """Every unit's card, and what holds for all of them (the data, the rules, the engine's notes)."""

    cards: list[Card]
    meta: dict = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row per card (tuples as list columns), built column by column; ``attrs``: the meta."""
        cols = {}
        for f in CARD_FIELDS:
            values = [getattr(c, f) for c in self.cards]
            cols[f] = [list(v) for v in values] if values and isinstance(values[0], tuple) else values
        df = pd.DataFrame(cols)
        df.attrs.update(self.meta)
        return df


def roles(model: nn.Module, data: Data, **kwargs) -> pd.DataFrame:
    """One row per unit: every number of its card (see ``lesion.roles.Card``); ``df.attrs`` holds the
    settings, the rules and the stated omissions that hold for all. Keywords as ``build``.

    >>> import torch, lesion
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    >>> x, y = torch.randn(60, 4, generator=torch.Generator().manual_seed(0)), torch.arange(60) % 3
    >>> df = lesion.roles(net, (x, y), pair_units=2)
    >>> len(df), list(df.columns[:3]), df.attrs["rules"][0]["name"]
    (6, ['unit', 'layer', 'index'], 'memorisation')
    """
    return build(model, data, **kwargs).table()


@dataclass(frozen=True)
class Options:
    """The settings of one ``build`` (the stages read them)."""

    top: int
    bins: int
    sample: int
    pair_units: int
    partners: int
    causal_draws: int
    explainer: object
    simulator: object
    seed: int
    batch_size: int
    progress: bool
    budget: object = None  # the triage budget (None: every unit exactly)
    spread: dict = field(default_factory=dict)  # where the exact lesions run (local or ray)


def build(
    model: nn.Module,
    data: Data,
    *,
    sites: Sequence[Site] | None = None,
    layers: Sequence[str] | None = None,
    train: Data | None = None,
    true_labels: torch.Tensor | None = None,
    top: int = 8,
    bins: int = 20,
    sample: int = 4000,
    pair_units: int | None = None,
    partners: int | None = None,
    causal_draws: int = 8,
    explainer=None,
    simulator=None,
    seed: int = 0,
    batch_size: int = 1000,
    progress: bool = False,
    keep: str | Path | None = None,
    triage: int | str | None = "auto",
    backend: str = "local",
    address: str | None = None,
    shards: int | None = None,
) -> Atlas:
    """The card of every unit of ``model`` (its activation sites, or ``sites``/``layers``) on ``data``.

    ``train`` with ``true_labels``: the training data with the (corrupted) labels the network was trained
    on and the true labels, for the memorisation parts. ``pair_units`` units with the largest effects get
    pair lesions with ``partners`` candidates by activity correlation and as many by effect, and the
    compensation part (default 16 and 3; 8 and 2 in an atlas made by triage, whose lesions are dear).
    ``explainer``/``simulator``: see ``lesion.roles.explain``. ``keep``: a folder
    where the lesion stages are kept and from which a later run with the same settings, model and data
    takes them. ``triage``: ``"auto"`` (exact up to ``lesion.roles.scale.AUTO_UNITS`` units, then triage),
    None for every unit exactly, or an exact budget as ``lesion.sweep(..., triage=)`` takes it (a count,
    ``"1%"``, ``"20min"``); see ``lesion.roles.scale``. ``backend="ray"`` (with ``address``, ``shards``)
    shards the exact single-unit lesions over Ray as ``lesion.sweep`` does.
    """
    from lesion.roles import scale, stages_run

    spread = scale.check_backend(backend, address, shards)
    data = reusable(data)
    sites = list(sites) if sites is not None else sites_for(model, data, layers)
    lm, labeled, n_classes, data = _task(model, data, batch_size)
    if not sites:
        raise LesionError("the model has no sites with units to make cards of")
    budget = scale.plan(triage, sum(s.width for s in sites))
    pair_units, partners = scale.pair_defaults(pair_units, partners, budget)
    opt = Options(top, bins, sample, pair_units, partners, causal_draws, explainer, simulator, seed,
                  batch_size, progress, budget, spread)  # fmt: skip
    meta = _start(lm, labeled, n_classes, train, true_labels)
    bar = progress_bar(None, "roles", progress, total=11 if lm else 10)
    say = Laps(bar)
    ctx = _responds(model, data, sites, lm, labeled, n_classes, opt, meta)
    ctx |= {"lm": lm, "labeled": labeled, "sites": {s.name: s for s in sites}, "n_classes": n_classes}
    say.lap("activity")
    ctx["units"] = [Unit(s.name, j) for s in sites for j in range(s.width)]
    settings = {"n": ctx["n"], "units": len(ctx["units"]), "sites": [str(s) for s in sites]}
    settings |= {k: getattr(opt, k) for k in ("seed", "pair_units", "partners", "causal_draws")}
    settings["triage"] = None if budget is None else str(budget)
    if keep is not None:  # kept stages belong to this model and this data only
        settings["digest"] = digest(model, data, batch_size)
    kept = Keep(Path(keep) if keep is not None else None, settings)
    ctx |= stages_run.lesions(model, data, sites, ctx, opt, kept, say)
    ctx |= stages_run.scores(model, data, sites, ctx, opt, kept, say)
    mem = {}
    if train is not None:
        mem = kept("memorisation", lambda: stages.memorisation(
            model, train, true_labels, sites, ctx["units"], n_classes, batch_size, progress))  # fmt: skip
    say.lap("memorisation")
    ctx["mem"] = mem
    cards = [fill.card(i, u, ctx) for i, u in enumerate(ctx["units"])]
    say.lap("cards")
    bar.close()
    meta["seconds"], meta["cpu_seconds"] = say.laps, say.cpu
    meta |= {
        "rules": rules.table(),
        "thresholds": dict(rules.THRESHOLDS),
        "pairs_tried": len(ctx["pair_list"]),
        "pairs_how": ctx["pairs_how"],
        "sites": [str(s) for s in sites],
        "site_shapes": {s.name: list(s.shape) for s in sites},
        "triage": ctx["triage"],
        "backend": backend,
    }
    return Atlas(cards, meta)


def _start(lm: bool, labeled: bool, n_classes: int, train, true_labels) -> dict:
    """The atlas's first facts and omissions; memorisation's arguments checked before any work."""
    meta: dict = {"omissions": [], "task": "causal-lm" if lm else "classifier", "labels": labeled}
    meta["n_classes"] = n_classes
    if (train is None) != (true_labels is None):
        raise LesionError(
            "memorisation needs both train= (the data with the labels the network was trained on) and "
            "true_labels= (the labels before corruption)"
        )
    if lm:
        if train is not None:
            raise LesionError("memorisation (train=, true_labels=) needs a classifier, not a language model")
        meta["omissions"].append(tokens.OMITTED)
    elif not labeled:
        meta["omissions"].append(
            "no labels: no class parts (selectivity, class means, per-class effects, information, "
            "simulation and causal scores); effects are measured against the intact model's predictions"
        )
    return meta


def _responds(model, data, sites, lm, labeled, n_classes, opt: Options, meta: dict) -> dict:
    """Part a, streamed: statistics, top examples, histograms, samples (tokens for a language model)."""
    k = {"k": opt.top, "bins": opt.bins, "sample": opt.sample, "batch_size": opt.batch_size}
    stats = collect_stats(model, data, sites, labels=labeled, batch_size=opt.batch_size)
    token_parts, y_all = {}, None
    if lm:
        found, token_parts, y_sample, ids_sample, per_seq = tokens.token_activity(
            model, data, sites, n_classes, **k
        )
        meta |= {"tokens_per_sequence": per_seq, "n_tokens": found[sites[0].name].n}
        meta["sample"] = len(ids_sample)
    else:
        lo, hi = head_ranges(model, data, sites, opt.batch_size)  # heads: the range of their output norm
        lo = {s.name: lo[s.name] if s.heads else stats[s.name].moments.lo for s in sites}
        hi = {s.name: hi[s.name] if s.heads else stats[s.name].moments.hi for s in sites}
        found, y_all, ids_sample = activity(
            model, data, sites, lo, hi, n_classes=n_classes if labeled else 0, **k
        )
        y_sample = y_all[ids_sample] if y_all is not None and labeled else None
    meta["n_examples"] = n = stats[sites[0].name].moments.n_examples
    samples = {s.name: found[s.name].sample.numpy() for s in sites}  # float32: (sample, units)
    for s in sites:
        found[s.name].sample = None  # kept once, in ``samples``
    return {"stats": stats, "found": found, "token_parts": token_parts, "labels": y_all, "n": n,
            "y_sample": y_sample, "ids_sample": ids_sample, "samples": samples}  # fmt: skip


def _task(model: nn.Module, data: Data, batch_size: int) -> tuple[bool, bool, int, Data]:
    """(language model, labelled, classes or vocabulary, data): a classifier's data without integer
    labels gets the intact model's predictions as targets (one tensor input needed)."""
    b = first_batch(data)
    out = forward(model, b, check=False)
    if out.ndim == 3:
        tokens.input_ids(b)  # token ids, or a clear error
        return True, False, out.shape[-1], data
    if out.ndim != 2:
        raise DataError(
            f"the model returned {tuple(out.shape)}; cards need a classifier's logits (batch, classes) or "
            "a language model's (batch, seq, vocab)"
        )
    c = out.shape[-1]
    y = b.target
    if y is not None and y.ndim == 1 and not y.dtype.is_floating_point and y.dtype != torch.bool:
        return False, True, c, data
    xs, preds = [], []
    for bb in batches(data, batch_size=batch_size):
        xs.append(bb.x)
        preds.append(forward(model, bb, check=False).argmax(-1))
    return False, False, c, (torch.cat(xs), torch.cat(preds))
