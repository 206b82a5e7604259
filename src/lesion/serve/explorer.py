"""The state behind ``lesion serve``: one model, its held-out data, and what was measured on them once.

``Explorer`` measures everything a page needs when it is built (the unit table, cumulative curves, each
unit's class means and top-activating examples) and then answers one question per click: accuracy,
loss, per-class accuracy and confusion matrix under a lesion, and the values of a ``metric=`` of the
user's own, measured in the same passes (``lesion.metrics.Joint``): its ``main`` column is the unit
table's importance beside loss and accuracy, its curve column the curves' axis. Every lesion is applied
with forward hooks on the one shared model under a lock, so concurrent requests never see each other's
hooks, and the model is never changed.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lesion.analyses.evaluation import Evaluation, as_evaluation
from lesion.core.capture import grab
from lesion.core.lesions import Lesion
from lesion.core.metric import Classification, Joint, Metric
from lesion.core.runner import Runner
from lesion.core.sites import Site, default_candidates, find_sites
from lesion.core.stats import collect_stats, per_example
from lesion.core.units import UnitSet, compact, parse_units  # noqa: F401  (compact: imported from here)
from lesion.errors import DataError, UnitError
from lesion.pipeline import classifier as study

CURVE_ORDERS = ("random", "selectivity_high", "importance_high")
UNIT_COLUMNS = (
    "layer", "unit", "selectivity", "preferred_class", "mutual_info", "mean_activity", "sd_activity",
    "dead", "loss", "accuracy", "delta_loss", "delta_accuracy",
)  # fmt: skip


@dataclass(frozen=True)
class Activity:
    """Per site: class-conditional mean activity and the examples that drive each unit most."""

    class_means: np.ndarray  # (classes, units); feature maps averaged over space first
    top_index: np.ndarray  # (k, units): example indices, strongest first
    top_value: np.ndarray  # (k, units): their per-example activity


class Explorer:
    """A model and held-out data ``(x, y)``, measured once, ready to evaluate any lesion on demand.

    ``sites`` defaults to every activation (``lesion.find_sites``); the cumulative curves run over the
    paper's candidates (all sites of an MLP, the last three conv sites of a convnet).

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    >>> x, y = torch.randn(30, 4), torch.arange(30) % 3
    >>> ex = Explorer(net, (x, y), curve_repeats=1, curve_points=3)
    >>> units, result = ex.evaluate(["1:0-2"])
    >>> units.to_strings(), result.n
    (['1:0', '1:1', '1:2'], 30)
    """

    def __init__(
        self,
        model: nn.Module,
        data: tuple[torch.Tensor, torch.Tensor],
        *,
        classes: Sequence[str] | None = None,
        sites: Sequence[Site] | None = None,
        name: str = "model",
        dataset: str = "data",
        batch_size: int = 1000,
        curve_repeats: int = 5,
        curve_points: int = 41,
        top_k: int = 12,
        cache_size: int = 512,
        progress: bool = False,
        metric: Metric | None = None,
    ):
        self.model, self.name, self.dataset = model, name, dataset
        self.x, self.y = _pair(data)
        self.sites = list(sites) if sites is not None else find_sites(model, self.x[:2])
        if not self.sites:
            raise DataError("the model has no sites (activation layers with units) to lesion")
        self.candidates = default_candidates(self.sites)
        self._lock = threading.Lock()  # one lesion's hooks on the shared model at a time
        xy = (self.x, self.y)
        # the page's classification parts, and a metric of the user's own beside them in the same passes
        self.metric = _scored(metric)
        # one intact pass: the statistics and the intact model, shared by the runner, the unit table
        # and the curves
        stats = collect_stats(model, xy, self.sites, batch_size=batch_size, metric=self.metric)
        self._runner = Runner(model, xy, self.sites, metric=self.metric, batch_size=batch_size,
                              measured=stats)  # fmt: skip
        self.intact: Evaluation = as_evaluation(self._runner.intact)
        self.classes = _class_names(classes, self.n_classes)
        self.units = study.units(model, xy, sites=self.sites, batch_size=batch_size, progress=progress,
                                 reference=stats, metric=self.metric)  # fmt: skip
        self.curves = study.curves(
            model, xy, sites=self.sites, orders=CURVE_ORDERS, repeats=curve_repeats, units=self.units,
            fractions=curve_points, batch_size=batch_size, progress=progress, reference=stats,
            metric=self.metric,
        )  # fmt: skip
        self.activity = _activity(model, self.x, self.y, self.sites, self.n_classes, top_k, batch_size)
        self._rows = self.units.set_index(["layer", "unit"])
        self._cache: OrderedDict[tuple[str, ...], Evaluation] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self._atlas = None  # every unit's card (lesion.roles), measured at the first card request
        self._lo, self._hi = _display_range(self.x)

    @property
    def n_classes(self) -> int:
        return self.intact.confusion.shape[0]

    def selection(self, units: Sequence[str]) -> UnitSet:
        """Parse and validate unit addresses against the sites; raises UnitError or SiteError.

        Ranges are checked against the widths before they are expanded: "fc1:0-999999999" costs nothing.
        """
        return parse_units([str(text) for text in units], self.sites)

    def evaluate(self, units: Sequence[str]) -> tuple[UnitSet, Evaluation]:
        """The validated lesion and the model's loss, accuracy, per-class accuracy and confusion under it."""
        selection = self.selection(units)
        key = tuple(selection.to_strings())
        if not key:
            return selection, self.intact
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return selection, self._cache[key]
        with self._lock:
            result = as_evaluation(self._runner.run([Lesion(selection)]))
        with self._cache_lock:
            self._cache[key] = result
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return selection, result

    def unit(self, address: str) -> dict:
        """Everything measured about one unit: its table row, per-class drops, class means, top examples."""
        chosen = self.selection([address]).units()
        if len(chosen) != 1:
            raise UnitError(f"expected one unit like 'layer:17', got {address!r}")
        unit = chosen[0]
        row = self._rows.loc[(unit.layer, unit.index)]
        act = self.activity[unit.layer]
        top = [
            {"index": int(i), "label": int(self.y[i]), "activity": float(v)}
            for i, v in zip(act.top_index[:, unit.index], act.top_value[:, unit.index], strict=True)
        ]
        drops = [row[f"delta_accuracy_class_{c}"] for c in range(self.n_classes)]
        main = self.metric.main
        return {
            "layer": unit.layer, "unit": unit.index, "address": str(unit),
            **{k: row[k] for k in UNIT_COLUMNS[2:]},
            "main": row[main], "delta_main": row[f"delta_{main}"],
            "importance": self.metric.harm(row[f"delta_{main}"]),
            "per_class_delta_accuracy": drops,
            "class_means": act.class_means[:, unit.index].tolist(),
            "top_examples": top,
        }  # fmt: skip

    def card(self, address: str) -> dict:
        """One unit's card, as ``atlas.html`` shows it (``lesion.roles``): the cards of every unit are
        measured on the held-out data at the first request, under the lesion lock, and kept."""
        from lesion.roles.assemble import build
        from lesion.roles.atlas import one_card, page_data, thumbnails

        chosen = self.selection([address]).units()
        if len(chosen) != 1:
            raise UnitError(f"expected one unit like 'layer:17', got {address!r}")
        with self._lock:
            if self._atlas is None:
                self._atlas = build(self.model, (self.x, self.y), sites=self.sites)
        one = one_card(self._atlas, str(chosen[0]))
        card = one.cards[0]
        images = thumbnails((self.x, self.y), [*card.top_index, *card.bottom_index])
        doc = page_data(one, images, title=self.name, classes=self.classes)
        return {"card": doc["cards"][0], "meta": doc["meta"], "images": doc["images"]}

    def importance(self):
        """Each unit's harm when deleted alone, in the metric's ``main`` column: its delta, negated where
        higher is better (Classification: ``delta_loss``)."""
        return self.metric.harm(self.units[f"delta_{self.metric.main}"])

    def unit_rows(self) -> list[dict]:
        """One dict per unit with the columns of ``UNIT_COLUMNS`` (per-class drops left out), ``importance``
        and the metric's own ``main`` value and delta under the keys ``main`` and ``delta_main``."""
        main = self.metric.main
        rows = self.units[list(UNIT_COLUMNS)].assign(
            importance=self.importance(), main=self.units[main], delta_main=self.units[f"delta_{main}"]
        )
        return rows.to_dict("records")

    def curve_summary(self) -> list[dict]:
        """Per order: units deleted and the metric's curve column (``self.metric.curve_column``: accuracy
        by default), mean and SD over repeats, at each measured count."""
        out = []
        for order, g in self.curves.groupby("order", sort=False):
            column = g.groupby("n_ablated")[self.metric.curve_column]
            stats = column.agg(["mean", "std", "count"]).reset_index()
            out.append({
                "order": str(order),
                "repeats": int(stats["count"].max()),
                "n_ablated": stats["n_ablated"].astype(int).tolist(),
                "value": stats["mean"].tolist(),
                "value_sd": stats["std"].fillna(0.0).tolist(),
            })  # fmt: skip
        return out

    def image_png(self, index: int) -> bytes:
        """Held-out example ``index`` as a PNG at its own resolution (contrast fixed over the dataset)."""
        from PIL import Image

        if not 0 <= index < len(self.y):
            raise UnitError(f"example index {index} out of range: expected 0..{len(self.y) - 1}")
        img = self.x[index].float()
        if img.ndim == 1:  # flat vectors: show as one row
            img = img[None, None]
        elif img.ndim == 2:
            img = img[None]
        img = ((img - self._lo) / (self._hi - self._lo)).clamp(0, 1).mul(255).round().byte()
        arr = img[:3].permute(1, 2, 0).numpy() if img.shape[0] >= 3 else img[0].numpy()
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
        return buf.getvalue()


def _scored(metric: Metric | None) -> Metric:
    """Classification, with ``metric`` first where it is another (its columns must not be loss/accuracy)."""
    if metric is None or type(metric) is Classification:
        return metric or Classification()
    if not isinstance(metric, Metric):
        raise DataError(f"metric is a {type(metric).__name__}; expected a lesion.metrics.Metric")
    return Joint(metric, Classification())


def _pair(data) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise DataError(f"data is a {type(data).__name__}; expected an (inputs, labels) pair of tensors")
    x, y = (torch.as_tensor(v) for v in data)
    if y.ndim != 1 or x.ndim < 2 or len(x) != len(y) or len(y) == 0:
        raise DataError(
            f"inputs of shape {tuple(x.shape)} and labels of shape {tuple(y.shape)}; expected inputs "
            "(n, ...) and labels (n,) of the same length, n >= 1"
        )
    return x, y.long()


def _class_names(classes: Sequence[str] | None, n: int) -> tuple[str, ...]:
    if classes is None or len(classes) != n:
        return tuple(str(c) for c in range(n))
    return tuple(str(c) for c in classes)


def _activity(model, x, y, sites, n_classes: int, k: int, batch_size: int) -> dict[str, Activity]:
    """Class means and top-k examples of every unit (a head: the mean of its channels), in one pass
    with read-only hooks on each site's own tensor."""
    k = min(k, len(y))
    sums = {s.name: torch.zeros(n_classes, s.width, dtype=torch.float64) for s in sites}
    empty = {s.name: torch.zeros(0, s.width) for s in sites}
    best = {n: (e, e.long()) for n, e in empty.items()}  # (values, example indices), each (<= k, units)
    for acts, b, _ in grab(model, (x, y), sites, batch_size=batch_size):  # a head view reads its slice
        first = int(b.ids[0])
        for site in sites:
            per = per_example(acts[site.name], site.unit_dim).float().cpu()  # (batch, channels)
            act = per.reshape(len(per), site.width, site.group).mean(2)  # (batch, units): a head's mean
            sums[site.name].index_add_(0, b.target.cpu(), act.double())
            idx = torch.arange(first, first + len(act))[:, None].expand_as(act)
            vals, where = best[site.name]
            vals, where = torch.cat([vals, act]), torch.cat([where, idx])
            top = vals.topk(min(k, len(vals)), dim=0)
            best[site.name] = (top.values, where.gather(0, top.indices))
    counts = torch.bincount(y, minlength=n_classes).double().clamp(min=1)[:, None]
    return {
        s.name: Activity((sums[s.name] / counts).numpy(), best[s.name][1].numpy(), best[s.name][0].numpy())
        for s in sites
    }


def _display_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (low, high) over the whole dataset, so thumbnails share one contrast."""
    if x.ndim != 4:
        lo, hi = x.min().reshape(1, 1, 1), x.max().reshape(1, 1, 1)
    else:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1).float()
        lo, hi = flat.amin(1)[:, None, None], flat.amax(1)[:, None, None]
    return lo, torch.where(hi > lo, hi, lo + 1)


def explorer_for(
    model: Path, dataset: str | None, examples: int | None, layers: Sequence[str] | None, *, say=print
):  # fmt: skip
    """The explorer's state: the model, its held-out data (or a seeded sample of it), measured once."""
    import torch

    from lesion.core.sites import find_sites
    from lesion.pipeline.classifier import DATA_SEED, dataset_for
    from lesion.pipeline.open import open_any

    net, info = open_any(model)
    data = dataset_for(info, dataset, model)
    x, y = data.x_test, data.y_test
    if examples is not None and examples < len(y):
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(DATA_SEED))[:examples]
        x, y = x[keep.sort().values], y[keep.sort().values]
    sites = find_sites(net, x[:2], list(layers) if layers else None)
    say(
        f"measuring {sum(s.width for s in sites)} units of {model.name} on {len(y)} held-out examples of "
        f"{data.name}" + (" (--examples 2000 would be quicker)" if len(y) > 2000 else "")
    )
    return Explorer(
        net, (x, y), classes=data.classes, sites=sites, name=model.name, dataset=data.name, progress=True
    )
