"""Atlases made by triage: every unit estimated, the top units and a random sample exact, each card
marked exact or estimated, the recall recorded; the automatic choice, ``lesion atlas --triage``, and
bad budgets."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lesion.errors import LesionError, LesionNote
from lesion.roles import build, scale


def _net():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 4))
    g = torch.Generator().manual_seed(2)
    return net, torch.randn(90, 6, generator=g), torch.randint(0, 4, (90,), generator=g)


def _estimates(net, x, y) -> np.ndarray:
    """The attribution estimate of deleting each hidden unit (zero), by hand: sum over examples of
    (0 - a) dL/da for the mean cross-entropy L, in unit order."""
    acts = {}
    hooks = [net[i].register_forward_hook(lambda m, i_, o, i=i: acts.__setitem__(i, o)) for i in (1, 3)]
    loss = F.cross_entropy(net(x), y)
    for h in hooks:
        h.remove()
    grads = torch.autograd.grad(loss, [acts[1], acts[3]])
    return np.concatenate(
        [(-a * g).sum(0).detach().numpy() for a, g in zip((acts[1], acts[3]), grads, strict=True)]
    )


@pytest.fixture(scope="module")
def triaged():
    net, x, y = _net()
    return net, x, y, build(net, (x, y), triage=16, pair_units=3, seed=1), build(net, (x, y), pair_units=3)


def test_cards_say_exact_or_estimated_and_the_exact_ones_are_the_exact_numbers(triaged):
    net, x, y, tri, exact = triaged
    est = _estimates(net, x, y)
    cards, full = tri.cards, {c.unit: c for c in exact.cards}
    chosen = [c for c in cards if c.effect_source == "exact"]
    assert len(chosen) == 16 and len(cards) == 40
    top = set(np.argsort(-np.abs(est), kind="stable")[:8].tolist())  # the top block: half the budget
    assert top <= {i for i, c in enumerate(cards) if c.effect_source == "exact"}
    for i, c in enumerate(cards):
        assert c.loss_zero_estimate == pytest.approx(est[i], rel=1e-4, abs=1e-7)
        if c.effect_source == "exact":
            f = full[c.unit]
            assert (c.loss_zero, c.loss_zero_lo, c.loss_zero_hi) == pytest.approx(
                (f.loss_zero, f.loss_zero_lo, f.loss_zero_hi), rel=1e-5, abs=1e-8
            )
            assert c.class_loss_zero == pytest.approx(f.class_loss_zero, rel=1e-5, abs=1e-8)
            if i in top:  # the second replacement: the top block only
                assert c.loss_mean == pytest.approx(f.loss_mean, rel=1e-5, abs=1e-8)
            else:
                assert np.isnan(c.loss_mean) and any("top block only" in o for o in c.omissions)
        else:
            assert c.loss_zero == c.loss_zero_estimate and np.isnan(c.loss_zero_lo)
            assert c.role_rule == "estimated" or c.role_rule in ("dead", "constant")
            assert c.role.startswith("not measured exactly") or c.role_rule != "estimated"
            assert any("estimated by attribution" in o for o in c.omissions)
            assert not c.partners  # pairs only among units measured exactly


def test_the_atlas_records_the_recall_and_pairs_use_exact_units_only(triaged):
    *_, tri, _ = triaged
    report = tri.meta["triage"]
    assert report["exact"] == 16 and report["top"] == 8 and report["sampled"] == 8
    assert report["k"] == 1  # the top 1% (a quarter of the budget at most)
    assert 0 <= report["low"] <= report["recall"] <= report["high"] <= 1
    assert "hypergeometric" in report["method"]
    # a sample of 8 for the top 1 cannot bound the recall, and the claim says so instead of the point
    assert report["low"] == 0 and not report["bounded"] and "not bounded" in report["claim"]
    exact = {c.unit for c in tri.cards if c.effect_source == "exact"}
    for c in tri.cards:
        assert set(c.partners) <= exact
    assert "measured exactly" in tri.meta["pairs_how"]
    df = tri.table()
    assert set(df["effect_source"]) == {"exact", "estimated"}


def test_auto_triages_above_the_threshold_and_says_so(monkeypatch):
    net, x, y = _net()
    assert scale.plan("auto", scale.AUTO_UNITS) is None
    monkeypatch.setattr(scale, "AUTO_UNITS", 30)
    monkeypatch.setattr(scale, "AUTO_MIN", 10)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        atlas = build(net, (x, y), pair_units=0)
    notes = [str(w.message) for w in said if issubclass(w.category, LesionNote)]
    assert any("40 units (more than 30): effects by triage, exact for 10 units" in n for n in notes), notes
    assert sum(c.effect_source == "exact" for c in atlas.cards) == 10
    assert build(net, (x, y), pair_units=0, triage=None).meta["triage"] is None


@pytest.mark.parametrize("budget", [0, 41, "lots", -3])
def test_a_bad_budget_is_a_clear_error(budget):
    net, x, y = _net()
    with pytest.raises(LesionError, match="triage="):
        build(net, (x, y), triage=budget)


def test_lesion_atlas_triage_flag(tmp_path):
    from typer.testing import CliRunner

    from lesion.cli import app

    runner = CliRunner()
    model = tmp_path / "m.safetensors"
    made = runner.invoke(app, ["train", "--widths", "24", "--epochs", "1", "--dataset", "digits", "--out",
                               str(model)])  # fmt: skip
    assert made.exit_code == 0, made.output
    got = runner.invoke(app, ["atlas", str(model), "--examples", "100", "--triage", "6", "--out",
                              str(tmp_path / "a")])  # fmt: skip
    assert got.exit_code == 0, got.output
    assert "effects by triage (budget 6): exact for 6 units" in " ".join(got.output.split())
    import pandas as pd

    df = pd.read_parquet(tmp_path / "a" / "roles.parquet")
    assert (df["effect_source"] == "exact").sum() == 6 and len(df) == 24
    bad = runner.invoke(app, ["atlas", str(model), "--triage", "0", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "at least 1 unit" in bad.output
