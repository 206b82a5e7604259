"""A metric defined only here, in a test file, works everywhere a metric is taken: sweep, ablation
curves and their AUC, noise curves, the attribution estimate and the optimal replacement. Its values
are checked against a computation written out in the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lesion
from lesion.core.metric import Metric
from lesion.errors import LesionError


class TrueClassProb(Metric):
    """Mean probability of the true class (``p_true``) and its mean log (``log_p``): higher is better."""

    main, curve, higher_is_better = "p_true", "p_true", True

    def update(self, outputs, batch, lesions, intact=None):
        y = batch["target"].long()  # fields by name, as a user of dict batches writes them
        p = outputs.float().softmax(-1)  # (k, batch, classes)
        pt = p.gather(2, y[None, :, None].expand(p.shape[0], -1, 1))[..., 0].double()
        self._add("p_true", lesions, pt.sum(1).numpy())
        self._add("log_p", lesions, pt.log().sum(1).numpy())
        self._add("count", lesions, np.full(p.shape[0], float(len(y))))

    def compute(self):
        n = self.sums["count"]
        return {"p_true": self.sums["p_true"] / n, "log_p": self.sums["log_p"] / n}

    def loss(self, output, batch):
        p = output.float().softmax(-1).gather(1, batch["target"].long()[:, None])[:, 0]
        return p.sum(), float(len(p))


def by_hand(net, x, y, zero: list[int]) -> float:
    """p_true with the hidden units ``zero`` clamped to 0, written out."""
    with torch.no_grad():
        h = torch.relu(net[0](x))
        h[:, zero] = 0
        return float(net[2](h).softmax(-1).gather(1, y[:, None]).mean())


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(120, 5), torch.arange(120) % 3
    return net, x, y


def test_sweep_reports_the_metric_columns_and_its_main_delta(setup):
    net, x, y = setup
    df = lesion.sweep(net, (x, y), [f"1:{j}" for j in range(8)] + ["1:0-3"], TrueClassProb(), batch_size=50)
    assert {"p_true", "log_p", "delta_p_true", "delta_log_p"} <= set(df.columns)
    for j in range(8):
        assert df.p_true[j] == pytest.approx(by_hand(net, x, y, [j]), abs=1e-6)
    assert df.p_true[8] == pytest.approx(by_hand(net, x, y, [0, 1, 2, 3]), abs=1e-6)
    assert df.attrs["intact"]["p_true"] == pytest.approx(by_hand(net, x, y, []), abs=1e-6)


def test_curves_and_their_auc_use_the_metrics_curve_column(setup):
    net, x, y = setup
    curves = lesion.ablation_curves(net, (x, y), orders=["random"], repeats=2, metric=TrueClassProb())
    assert "accuracy" not in curves and {"p_true", "log_p"} <= set(curves.columns)
    out = lesion.curve_auc(curves)
    assert out.attrs["column"] == "p_true" and len(out) == 2
    g = curves[curves.repeat == 0]
    assert out.auc[0] == pytest.approx(float(np.trapezoid(g.p_true, g.fraction)), abs=1e-9)
    # read back without attrs: the float columns are the metric's, p_true asked for by name
    bare = curves.copy()
    bare.attrs = {}
    assert lesion.curve_auc(bare, "p_true").auc.tolist() == pytest.approx(out.auc.tolist())
    with pytest.raises(LesionError, match="no such column; metric columns: p_true, log_p"):
        lesion.curve_auc(curves, "accuracy")


def test_noise_curves_take_the_metric(setup):
    net, x, y = setup
    noise = lesion.noise_curves(net, (x, y), scales=[0.0, 1.0], repeats=1, metric=TrueClassProb())
    assert list(noise.columns) == ["scale", "repeat", "p_true", "log_p"]
    assert noise.p_true[0] == pytest.approx(by_hand(net, x, y, []), abs=1e-6)


def test_attribution_estimates_the_metrics_main_value(setup):
    net, x, y = setup
    df = lesion.attribution_table(net, (x, y), metric=TrueClassProb())
    exact = lesion.sweep(net, (x, y), [f"1:{j}" for j in range(8)], TrueClassProb())
    assert df.exact.tolist() == pytest.approx(exact.delta_p_true.tolist(), abs=1e-9)
    # the first-order estimate by hand: (0 - a_j) * d p_true / d a_j, summed over examples, / n
    h = torch.relu(net[0](x)).detach().requires_grad_(True)
    p = net[2](h).softmax(-1).gather(1, y[:, None]).mean()
    (grad,) = torch.autograd.grad(p, h)
    want = (-h * grad).sum(0).detach().numpy()
    assert df.estimate.tolist() == pytest.approx(want.tolist(), abs=1e-6)


def test_the_optimal_replacement_fits_the_metrics_loss(setup):
    net, x, y = setup
    units = [f"1:{j}" for j in range(8)]
    lesions = [lesion.Lesion(u, lesion.replacements.Optimal(steps=40)) for u in units]
    fitted = lesion.sweep(net, (x, y), lesions, TrueClassProb())
    zero = lesion.sweep(net, (x, y), units, TrueClassProb())
    mean = lesion.sweep(
        net, (x, y), [lesion.Lesion(u, lesion.replacements.Mean()) for u in units], TrueClassProb()
    )
    # Optimal seeks the better end of the metric's main value (higher p_true here), starting from the
    # better of zero and mean and keeping the best seen: never below either
    assert (fitted.p_true.to_numpy() >= zero.p_true.to_numpy() - 1e-9).all()
    assert (fitted.p_true.to_numpy() >= mean.p_true.to_numpy() - 1e-9).all()
    assert (fitted.p_true.to_numpy() > zero.p_true.to_numpy() + 1e-6).any()  # it did move somewhere

    def p_sum(out, b):  # a loss given by hand: the summed p_true of one copy, minimised
        return TrueClassProb().loss(out[0], b)[0][None]

    lower = [lesion.Lesion(units[0], lesion.replacements.Optimal(steps=40, loss=p_sum))]
    worst = lesion.sweep(net, (x, y), lower, TrueClassProb())  # a loss given by hand wins over the metric's
    assert worst.p_true[0] <= fitted.p_true[0]


def test_a_metric_without_a_loss_is_refused_by_attribution_by_name(setup):
    net, x, y = setup

    class Plain(TrueClassProb):
        loss = Metric.loss

    with pytest.raises(LesionError, match="Plain has no differentiable loss"):
        lesion.attribution_table(net, (x, y), metric=Plain(), exact=False)


def test_the_explorer_measures_the_metric_beside_loss_and_accuracy(setup):
    from lesion.serve import Explorer

    net, x, y = setup
    ex = Explorer(net, (x, y), metric=TrueClassProb(), curve_repeats=2, curve_points=5)
    _, result = ex.evaluate(["1:0-3"])
    assert result.values["p_true"] == pytest.approx(by_hand(net, x, y, [0, 1, 2, 3]), abs=1e-6)
    assert ex.intact.values["p_true"] == pytest.approx(by_hand(net, x, y, []), abs=1e-6)
    assert result.accuracy == lesion.sweep(net, (x, y), ["1:0-3"]).accuracy[0]  # the page's own parts
    # importance is the harm in the metric's main value (higher p_true is better: its negated delta)
    rows = {r["unit"]: r for r in ex.unit_rows()}
    for j in range(8):
        delta = by_hand(net, x, y, [j]) - by_hand(net, x, y, [])
        assert rows[j]["delta_main"] == pytest.approx(delta, abs=1e-6)
        assert rows[j]["importance"] == pytest.approx(-delta, abs=1e-6)
    first = ex.curves[ex.curves.order == "importance_high"].groupby("n_ablated").p_true.mean()
    top = sorted(range(8), key=lambda j: -rows[j]["importance"])[:2]
    assert first[2] == pytest.approx(by_hand(net, x, y, top), abs=1e-6)  # most harmful by p_true first
    summary = {c["order"]: c for c in ex.curve_summary()}
    assert summary["random"]["value"][0] == pytest.approx(by_hand(net, x, y, []), abs=1e-6)


def test_the_explorers_api_reports_the_metric(setup):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from lesion.serve import Explorer, create_app, running

    net, x, y = setup
    ex = Explorer(net, (x, y), metric=TrueClassProb(), curve_repeats=1, curve_points=3)
    with running(create_app(ex)) as url, httpx.Client(base_url=url, timeout=30) as c:
        info = c.get("/api/model").json()
        assert info["metric"] == {"main": "p_true", "curve": "p_true", "higher_is_better": True}
        got = c.post("/api/evaluate", json={"units": ["1:2"]}).json()
        assert got["values"]["p_true"] == pytest.approx(by_hand(net, x, y, [2]), abs=1e-6)
        assert c.get("/api/curves").json()["column"] == "p_true"
        unit = c.get("/api/units/1:2").json()
        assert unit["delta_main"] == pytest.approx(by_hand(net, x, y, [2]) - by_hand(net, x, y, []), abs=1e-6)


def test_joint_metrics_refuse_clashing_columns_and_copy_their_parts(setup):
    import copy

    from lesion.core.stats import same_metric

    a = lesion.metrics.Joint(TrueClassProb(), lesion.metrics.Classification())
    b = copy.copy(a)
    assert b.parts[0] is not a.parts[0]  # a runner's copy accumulates on its own
    assert same_metric(a, b) and not same_metric(a, lesion.metrics.Joint(TrueClassProb()))
    net, x, y = setup
    both = lesion.sweep(net, (x, y), ["1:0", "1:1-2"], a)
    alone = lesion.sweep(net, (x, y), ["1:0", "1:1-2"])
    assert both.p_true[1] == pytest.approx(by_hand(net, x, y, [1, 2]), abs=1e-6)
    assert both.loss.tolist() == alone.loss.tolist() and both.accuracy.tolist() == alone.accuracy.tolist()
    clash = lesion.metrics.Joint(lesion.metrics.Classification(), lesion.metrics.Classification())
    with pytest.raises(LesionError, match="gives the column"):
        lesion.sweep(net, (x, y), ["1:0"], clash)
