"""``roles(model, data)``: the card of every unit, from recipes that already exist (``collect_stats``,
``selectivity_index``, ``mutual_information``, ``sweep``) and the few new ones in this package.

Stages: statistics and top examples (streamed); single-unit effects under zero and mean (``sweep``,
fast engine checked against the slow path); output pushes (weights); pairs and compensation for the
units with the largest effects; explanations and their simulation scores; the causal (necessity) test
per layer and class; memorisation on the training data where labels were corrupted. The lesion stages
can be kept in a folder (``keep=``) and are then reused by a later run with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from lesion.analyses.measures import mutual_information, selectivity_index
from lesion.analyses.sweep import sites_for
from lesion.core.batch import Data, batches, first_batch, reusable
from lesion.core.replacements import Mean, Resample, Zero
from lesion.core.runner import Runner
from lesion.core.sites import Site
from lesion.core.stats import collect_stats, forward
from lesion.core.units import Unit
from lesion.errors import DataError, LesionError
from lesion.roles import fill, rules, stages, tokens
from lesion.roles.activity import activity, head_ranges
from lesion.roles.card import Card
from lesion.roles.effects import LossChange, interval, set_effects, single_effects
from lesion.roles.pushes import pushes
from lesion.util.progress import progress_bar


@dataclass
class Atlas:
    """Every unit's card, and what holds for all of them (the data, the rules, the engine's notes)."""

    cards: list[Card]
    meta: dict = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        df = pd.DataFrame([c.row() for c in self.cards])
        df.attrs.update(self.meta)
        return df


class _Laps:
    """Seconds per stage (``meta["seconds"]``; CPU seconds of this process, all threads, in
    ``meta["cpu_seconds"]``), and the progress bar moved by one per stage."""

    def __init__(self, bar):
        self.bar, self.laps, self.cpu = bar, {}, {}
        self.t, self.c = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.laps[name], self.cpu[name] = round(now - self.t, 3), round(cpu - self.c, 3)
        self.t, self.c = now, cpu
        self.bar.update(1)


class _Keep:
    """Lesion stages kept as .npz files in a folder, reused when the settings' fingerprint matches."""

    def __init__(self, folder: Path | None, settings: dict):
        self.folder = folder
        self.tag = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, compute) -> dict[str, np.ndarray]:
        path = None if self.folder is None else self.folder / f"{name}-{self.tag}.npz"
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        got = compute()
        if path is not None:
            tmp = path.with_name(f".{path.stem}.tmp.npz")
            np.savez(tmp, **got)
            tmp.replace(path)
        return got


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
class _Options:
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
    pair_units: int = 16,
    partners: int = 3,
    causal_draws: int = 8,
    explainer=None,
    simulator=None,
    seed: int = 0,
    batch_size: int = 1000,
    progress: bool = False,
    keep: str | Path | None = None,
) -> Atlas:
    """The card of every unit of ``model`` (its activation sites, or ``sites``/``layers``) on ``data``.

    ``train`` with ``true_labels``: the training data with the (corrupted) labels the network was trained
    on and the true labels, for the memorisation parts. ``pair_units`` units with the largest effects get
    pair lesions with ``partners`` candidates by activity correlation and as many by effect, and the
    compensation part. ``explainer``/``simulator``: see ``lesion.roles.explain``. ``keep``: a folder
    where the lesion stages are kept and from which a later run with the same settings, model and data
    takes them.
    """
    opt = _Options(top, bins, sample, pair_units, partners, causal_draws, explainer, simulator, seed,
                   batch_size, progress)  # fmt: skip
    data = reusable(data)
    sites = list(sites) if sites is not None else sites_for(model, data, layers)
    lm, labeled, n_classes, data = _task(model, data, batch_size)
    if not sites:
        raise LesionError("the model has no sites with units to make cards of")
    meta = _start(lm, labeled, n_classes, train, true_labels)
    bar = progress_bar(None, "roles", progress, total=10 if lm else 9)
    say = _Laps(bar)
    ctx = _responds(model, data, sites, lm, labeled, n_classes, opt, meta)
    ctx |= {"lm": lm, "labeled": labeled, "sites": {s.name: s for s in sites}}
    say.lap("activity")
    ctx["units"] = [Unit(s.name, j) for s in sites for j in range(s.width)]
    settings = {"n": ctx["n"], "units": len(ctx["units"]), "sites": [str(s) for s in sites]}
    settings |= {k: getattr(opt, k) for k in ("seed", "pair_units", "partners", "causal_draws")}
    if keep is not None:  # kept stages belong to this model and this data only
        settings["digest"] = _digest(model, data, batch_size)
    kept = _Keep(Path(keep) if keep is not None else None, settings)

    def metric():
        return tokens.NextTokenChange(n_classes) if lm else LossChange(n_classes)

    ctx |= _lesions(model, data, sites, ctx, opt, kept, say, metric)
    ctx |= _scores(model, data, sites, ctx, opt, kept, say, metric, n_classes)
    mem = {}
    if train is not None:
        mem = kept("memorisation", lambda: stages.memorisation(
            model, train, true_labels, sites, ctx["units"], n_classes, batch_size, progress))  # fmt: skip
    say.lap("memorisation")
    bar.close()
    meta["seconds"], meta["cpu_seconds"] = say.laps, say.cpu
    meta |= {
        "rules": rules.table(),
        "thresholds": dict(rules.THRESHOLDS),
        "pairs_tried": len(ctx["pair_list"]),
        "pairs_how": stages.PAIRS_HOW.format(k=pair_units, p=partners),
        "sites": [str(s) for s in sites],
        "site_shapes": {s.name: list(s.shape) for s in sites},
    }
    ctx |= {"mem": mem, "pairs_how": meta["pairs_how"]}
    cards = [fill.card(i, u, ctx) for i, u in enumerate(ctx["units"])]
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


def _responds(model, data, sites, lm, labeled, n_classes, opt: _Options, meta: dict) -> dict:
    """Part a, streamed: statistics, top examples, histograms, samples (tokens for a language model)."""
    k = {"k": opt.top, "bins": opt.bins, "sample": opt.sample, "batch_size": opt.batch_size}
    stats = collect_stats(model, data, sites, labels=labeled, batch_size=opt.batch_size)
    token_means, y_all = {}, None
    if lm:
        found, token_means, y_sample, ids_sample, per_seq = tokens.token_activity(
            model, data, sites, n_classes, **k
        )
        meta |= {"tokens_per_sequence": per_seq, "n_tokens": found[sites[0].name].n}
    else:
        lo, hi = head_ranges(model, data, sites, opt.batch_size)  # heads: the range of their output norm
        lo = {s.name: lo[s.name] if s.heads else stats[s.name].moments.lo for s in sites}
        hi = {s.name: hi[s.name] if s.heads else stats[s.name].moments.hi for s in sites}
        found, y_all, ids_sample = activity(
            model, data, sites, lo, hi, n_classes=n_classes if labeled else 0, **k
        )
        y_sample = y_all[ids_sample] if y_all is not None and labeled else None
    meta["n_examples"] = n = stats[sites[0].name].moments.n_examples
    samples = {s.name: found[s.name].sample.numpy().astype(np.float64) for s in sites}
    return {"stats": stats, "found": found, "token_means": token_means, "labels": y_all, "n": n,
            "y_sample": y_sample, "ids_sample": ids_sample, "samples": samples}  # fmt: skip


def _lesions(model, data, sites, ctx, opt: _Options, kept, say, metric) -> dict:
    """Parts b to d: single-unit effects under each replacement (``sweep``), pushes, pairs and
    compensation for the units with the largest effects."""
    units, eff = ctx["units"], {}
    replacements = [("zero", Zero()), ("mean", Mean(stats=ctx["stats"]))]
    if isinstance(metric(), tokens.NextTokenChange):  # transformers: another sequence's activity too
        replacements.append(("resample", Resample(seed=opt.seed)))
    for name, rep in replacements:
        eff[name] = kept(
            f"effects-{name}",
            lambda rep=rep: single_effects(
                model, data, sites, units, rep, metric(), batch_size=opt.batch_size, progress=opt.progress
            )[0],
        )
        say.lap(f"effects-{name}")
    pushed = pushes(model, first_batch(data, 1), sites)
    say.lap("pushes")
    z_mean, _, _ = interval(eff["zero"]["dsum"], eff["zero"]["dsq"], eff["zero"]["count"])
    order = [i for i in np.argsort(-np.nan_to_num(z_mean, nan=-np.inf), kind="stable")[: opt.pair_units]]
    runner = Runner(model, data, sites, metric=metric(), batch_size=opt.batch_size)
    pair_list = stages.pairs(units, order, ctx["samples"], z_mean, opt.partners)
    pair_vals = kept("pairs", lambda: set_effects(runner, [[units[i], units[j]] for i, j in pair_list])
                     if pair_list else {})  # fmt: skip
    say.lap("pairs")
    comp = kept("compensation", lambda: stages.compensations(
        model, data, sites, [units[i] for i in order], opt.batch_size))  # fmt: skip
    say.lap("compensation")
    return {"eff": eff, "pushed": pushed, "order": order, "pair_list": pair_list, "pair_vals": pair_vals,
            "comp": comp}  # fmt: skip


def _scores(model, data, sites, ctx, opt: _Options, kept, say, metric, n_classes) -> dict:
    """Parts f and the transformer extras: explanations and simulation scores, direct effects, attention
    patterns, class measures and the causal test."""
    lm = isinstance(metric(), tokens.NextTokenChange)
    kind = "token" if lm else "class"
    expl = stages.explanations(
        ctx["units"], ctx["found"], ctx["samples"], ctx["y_sample"], ctx["ids_sample"], opt.explainer,
        opt.simulator, kind, opt.seed,
    )  # fmt: skip
    neurons = [s for s in sites if not s.heads]
    direct = (
        kept("direct", lambda: tokens.direct(model, data, neurons, opt.batch_size)) if lm and neurons else {}
    )
    head_sites = [s for s in sites if s.heads]
    patterns = tokens.head_patterns(model, data, head_sites, opt.batch_size) if head_sites else {}
    say.lap("explanations and direct effects")
    labeled = ctx["labeled"]
    si, pref, mi = _class_measures(sites, ctx["stats"], ctx["found"], labeled)

    def causal_test():
        return stages.causal(
            model, data, sites, si, pref, n_classes, opt.causal_draws, opt.seed, metric(), opt.batch_size
        )

    causal = kept("causal", causal_test) if labeled else {}
    say.lap("causal")
    return {"expl": expl, "direct": direct, "patterns": patterns, "si": si, "pref": pref, "mi": mi,
            "causal": causal}  # fmt: skip


def _digest(model: nn.Module, data: Data, batch_size: int) -> str:
    """SHA-256 of the model's weights and buffers and of every tensor of the data."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for b in batches(data, batch_size=batch_size):
        for t in (*b.args, *b.kwargs.values(), b.target):
            if isinstance(t, torch.Tensor):
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


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


def _class_measures(sites, stats, found, labeled):
    """Selectivity, preferred class and information per unit; a head's class means are of its output
    norm (the activity pass), and it has no information (no joint histogram)."""
    si, pref, mi = {}, {}, {}
    for s in sites:
        w = s.width
        means = None
        if labeled:
            f = found.get(s.name)
            means = (
                (f.class_sum / f.class_count[:, None])
                if s.heads and f is not None
                else stats[s.name].class_means
            )
        if means is not None and (~torch.isnan(means).any(1)).sum() >= 2:
            si[s.name], pref[s.name] = selectivity_index(means)
            mi[s.name] = np.full(w, np.nan) if s.heads else mutual_information(stats[s.name].histogram.counts)
        else:
            si[s.name], pref[s.name], mi[s.name] = np.full(w, np.nan), np.full(w, -1), np.full(w, np.nan)
    return si, pref, mi
