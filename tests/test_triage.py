"""Triage: exact numbers where computed, the estimate elsewhere, and a recall interval that covers the truth.

The truth is the full exact sweep (affordable on these small trained models); the interval's coverage is
checked across seeds on a trained MLP, on a tiny trained GPT-2, on synthetic effects, and on a model whose
estimate is useless (saturated units), where the reported recall must be low.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import lesion
from lesion.analyses.triage import choose, parse_budget, recall_interval
from lesion.errors import LesionError


def true_recall(df, full, col="delta_loss", top=0.01) -> float:
    """Share of the true top ``top`` (by |exact| in ``full``) that ``df`` computed exactly."""
    k = max(1, math.ceil(top * len(full)))
    best = set(np.argsort(-full[col].abs().to_numpy(), kind="stable")[:k].tolist())
    exact = set(np.flatnonzero(df["source"].to_numpy() == "exact").tolist())
    return len(best & exact) / k


@functools.cache
def digits_mlp(steps: int = 300):
    """A 64-256-256-10 ReLU MLP trained on sklearn's digits (full batch Adam, about a second)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(net(x[:1200]), y[:1200])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), (x[1200:], y[1200:])


def check_seeds(model, data, full, budget, seeds, metric=None) -> list[tuple[float, float, float, float]]:
    """(true recall, low, point, high) per seed; every exact row equals the full sweep's."""
    rows = []
    for seed in seeds:
        df = lesion.sweep(model, data, metric=metric, triage=budget, seed=seed)
        assert list(df["lesion"]) == list(full["lesion"])
        ex = df["source"].to_numpy() == "exact"
        assert ex.sum() == df.attrs["triage"]["exact"]
        np.testing.assert_allclose(df["delta_loss"][ex], full["delta_loss"][ex], rtol=1e-5, atol=1e-6)
        t = df.attrs["triage"]
        rows.append((true_recall(df, full), t["low"], t["recall"], t["high"]))
    return rows


def covered(rows) -> int:
    return sum(lo - 1e-9 <= truth <= hi + 1e-9 for truth, lo, _, hi in rows)


def test_trained_mlp_recall_interval_covers_the_truth():
    net, data = digits_mlp()
    full = lesion.sweep(net, data, [f"{layer}:{j}" for layer in ("1", "3") for j in range(256)])
    rows = check_seeds(net, data, full, "10%", range(10))
    print("\ndigits MLP, 512 units, budget 10%: (true recall, low, point, high) per seed", rows)
    assert covered(rows) >= 9
    assert np.mean([r[0] for r in rows]) >= 0.8  # the estimate is good on this model: most are found


def test_tiny_gpt_triage_matches_the_exact_sweep():
    from tests.text_support import pattern, tiny_gpt

    model = tiny_gpt()
    data = {"input_ids": pattern(24, seed=7)}
    metric = lesion.metrics.NextTokenLoss()
    full = lesion.sweep(model, data, [f"{s.name}:{j}" for s in lesion.find_sites(model, data) for j in
                                      range(s.width)], metric)  # fmt: skip
    rows = check_seeds(model, data, full, 30, range(5), metric=metric)
    print("\ntiny GPT-2, 136 units, budget 30: (true recall, low, point, high) per seed", rows)
    assert covered(rows) >= 4
    table = lesion.attribution_table(model, data, metric=metric, exact=False)
    df = lesion.sweep(model, data, metric=metric, triage="5s")
    np.testing.assert_allclose(df["estimate"], table["estimate"], rtol=1e-5, atol=1e-7)
    assert 8 <= df.attrs["triage"]["exact"] <= len(df)
    assert set(df["source"]) <= {"exact", "estimated"}
    guessed = df["source"] == "estimated"
    np.testing.assert_array_equal(df["delta_loss"][guessed], df["estimate"][guessed])
    assert df["loss"][guessed].isna().all() and df["loss"][~guessed].notna().all()


def test_heads_are_examined_exactly_first_where_they_fit_half_the_budget():
    from lesion.analyses.triage import heads_first, triage_sweep
    from tests.text_support import pattern, tiny_gpt

    model = tiny_gpt()
    data = {"input_ids": pattern(24, seed=7)}
    sites = lesion.find_sites(model, data)
    units = [(s.name, j) for s in sites for j in range(s.width)]
    heads = [i for i, (layer, _) in enumerate(units) if layer.endswith("attn")]
    assert heads and heads_first(units, sites, 2 * len(heads)).tolist() == heads
    assert heads_first(units, sites, 2 * len(heads) - 1).size == 0  # more than half the budget: ranked
    metric = lesion.metrics.NextTokenLoss()
    df = triage_sweep(model, data, None, metric, 2 * len(heads) + 4, sites=sites, seed=0)
    assert (df.source.to_numpy()[heads] == "exact").all() and df.attrs["triage"]["heads_first"] == len(heads)
    top, sampled = choose(np.arange(10.0), 6, sample=0.5, always=[0, 1])
    assert set(top.tolist()) >= {0, 1} and len(top) + len(sampled) == 6 and not set(top) & set(sampled)
    alone = triage_sweep(model, data, None, metric, 2 * len(heads) + 4, sites=sites, exhaust_heads=False)
    assert alone.attrs["triage"]["heads_first"] == 0


class Saturated(nn.Module):
    """``out = sum_j w_j (h_j - 1)^2`` with every ``h_j`` near 1: the gradient at the intact model is near 0
    while deleting ``h_j`` (to 0) changes the output by about ``w_j``: the estimate ranks units at random."""

    def __init__(self, width: int = 3000):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = nn.Linear(4, width)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(width, 4, generator=g) * 1e-3)
            self.fc.bias.fill_(1.0)
        self.act = nn.ReLU()
        self.register_buffer("w", 0.5 + torch.rand(width, generator=g))

    def forward(self, x):
        return ((self.act(self.fc(x)) - 1) ** 2 * self.w).sum(-1, keepdim=True)


def test_poor_estimate_reports_a_low_recall_that_covers_the_truth():
    net, x = Saturated(), torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    metric = lesion.metrics.Scalar(lambda out, b: out[:, 0], name="loss")
    full = lesion.sweep(net, x, [f"act:{j}" for j in range(3000)], metric)
    rows = check_seeds(net, x, full, "10%", range(10), metric=metric)
    print("\nsaturated units, 3000 units, budget 10%: (true recall, low, point, high) per seed", rows)
    assert covered(rows) >= 9
    assert np.mean([r[0] for r in rows]) < 0.6  # the estimate finds few ...
    assert np.mean([r[2] for r in rows]) < 0.7  # ... and the report says so


@pytest.mark.parametrize("quality", ["good", "noisy", "useless"])
def test_synthetic_coverage(quality):
    """Heavy-tailed effects, estimates good / noisy / unrelated: the 95% interval covers the true recall
    in at least 90% of 100 seeds; a useless estimate gives a low reported recall."""
    n, budget, k = 5000, 500, 50
    rows = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        eff = rng.standard_t(3, n) * np.exp(rng.normal(0, 1, n))
        noise = {"good": 0.1, "noisy": 2.0, "useless": None}[quality]
        est = rng.normal(size=n) if noise is None else eff + noise * eff.std() * rng.normal(size=n)
        top, sampled = choose(est, budget, sample=0.5, seed=seed)
        best = set(np.argsort(-np.abs(eff))[:k].tolist())
        truth = len(best & (set(top.tolist()) | set(sampled.tolist()))) / k
        r = recall_interval(eff[top], eff[sampled], n - len(top), k)
        rows.append((truth, r["low"], r["recall"], r["high"]))
    assert covered(rows) >= 90
    if quality == "useless":
        assert np.mean([r[2] for r in rows]) < 0.4 and np.mean([r[3] for r in rows]) < 0.6


def test_choose_and_budget_parsing():
    est = np.array([0.0, 5.0, -9.0, 1.0, 2.0, 0.5, 3.0, -0.1])
    top, sampled = choose(est, 4, sample=0.25, seed=0)
    assert top.tolist() == [1, 2, 6] and len(sampled) == 1 and sampled[0] not in top
    assert choose(est, 4, sample=0.25, seed=0)[1].tolist() == sampled.tolist()  # seeded
    assert choose(est, 8)[0].tolist() == list(range(8))  # the whole model: all exact, no sample
    assert parse_budget(3, 10) == (3, None)
    assert parse_budget("25%", 10) == (3, None)
    assert parse_budget("10min", 10) == (None, 600.0) and parse_budget("1.5h", 10) == (None, 5400.0)
    assert recall_interval(np.array([3.0, 2.0]), np.array([]), 0, 1)["low"] == 1.0  # nothing unexamined


def test_bad_budgets_are_refused():
    net, data = digits_mlp()
    bad_budgets = [
        (0, "at least 1"),
        (513, "larger than the model's 512 units"),
        (-2, "at least 1"),
        ("soon", "expected a number"),
        (True, "expected a number"),
        ("0s", "positive"),
    ]
    for bad, words in bad_budgets:
        with pytest.raises(LesionError, match=words):
            lesion.sweep(net, data, triage=bad)
    with pytest.raises(LesionError, match="single units"):
        lesion.sweep(net, data, ["1:0-1"], triage=1)
    with pytest.raises(LesionError, match="one replacement"):
        lesion.sweep(net, data, [lesion.Lesion("1:0"), lesion.Lesion("1:1", 1.0)], triage=1)
    with pytest.raises(LesionError, match="only with triage"):
        lesion.sweep(net, data)


def test_cli_analyze_triage_on_a_classifier_and_a_language_model(tmp_path):
    from typer.testing import CliRunner

    from lesion.cli import app
    from tests.test_hf_disk import SENTENCES, tiny_gpt2, word_tokenizer

    run = CliRunner()
    model = tmp_path / "mlp.safetensors"
    done = run.invoke(
        app, ["train", "--widths", "32", "--epochs", "1", "--dataset", "digits", "--out", str(model)]
    )
    assert done.exit_code == 0, done.output
    out = tmp_path / "a"
    args = ["--repeats", "1", "--fractions", "3", "--noise-repeats", "1", "--triage", "12", "--seed", "3"]
    done = run.invoke(app, ["analyze", str(model), "--dataset", "digits", "--out", str(out), *args])
    assert done.exit_code == 0, done.output
    units = pd.read_parquet(out / "units.parquet")
    assert (units["source"] == "exact").sum() == 12 and len(units) == 32
    assert units["selectivity"].notna().any()  # the statistics stay beside the triaged effects
    summary = json.loads((out / "summary.json").read_text())
    assert summary["triage"]["exact"] == 12 and summary["triage"]["seed"] == 3
    assert 0 <= summary["triage"]["low"] <= summary["triage"]["high"] <= 1
    bad = run.invoke(app, ["analyze", str(model), "--dataset", "digits", "--out", str(tmp_path / "b"),
                           "--triage", "33"])  # fmt: skip
    assert bad.exit_code == 2 and "larger than the model's 32 units" in bad.stderr

    lm = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(lm, safe_serialization=True)
    word_tokenizer().save_pretrained(lm)
    (tmp_path / "corpus.txt").write_text(" ".join(SENTENCES * 6) + "\n")
    done = run.invoke(app, ["analyze", str(lm), "--text", str(tmp_path / "corpus.txt"), "--seq-len", "16",
                            "--out", str(tmp_path / "lm"), "--repeats", "1", "--fractions", "3",
                            "--triage", "10%"])  # fmt: skip
    assert done.exit_code == 0, done.output
    units = pd.read_parquet(tmp_path / "lm" / "units.parquet")
    assert {"kind", "estimate", "source", "delta_loss"} <= set(units.columns)
    assert (units["source"] == "exact").sum() == math.ceil(0.1 * len(units))
    assert "triage" in json.loads((tmp_path / "lm" / "summary.json").read_text())


def test_the_claim_gives_a_lower_bound_only_where_the_sample_bounds_the_recall():
    from lesion.analyses.triage import recall_claim

    base = {"k": 40, "high": 1.0, "level": 0.95, "sampled": 1850, "recall": 1.0}
    bounded = recall_claim(base | {"low": 0.82})
    assert bounded.startswith("recall of the true top 40 >= 0.82 at 95% confidence")
    loose = recall_claim(base | {"low": 0.0, "sampled": 190})
    assert "not bounded" in loose and ">=" not in loose and "no evidence of high recall" in loose


def test_a_time_budget_is_filled_in_rounds_and_not_overrun(monkeypatch):
    """A time budget: the pilot's rate (which carries each call's fixed cost: checks, planning) sets the
    first count; later rounds fill the time left at the rate just measured, planning for 90% of it, so the
    run uses most of its time and never more. A fake clock makes each call to ``evaluate`` cost 10 s plus
    1 s a lesion."""
    import types

    import lesion.analyses.triage as triage

    clock = [0.0]
    monkeypatch.setattr(triage, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    real = triage.evaluate
    calls = []

    def costly(runner, lesions, **kw):
        clock[0] += 10.0 + len(lesions)
        calls.append(len(lesions))
        return real(runner, lesions, **kw)

    monkeypatch.setattr(triage, "evaluate", costly)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 400), nn.ReLU(), nn.Linear(400, 3))
    x = torch.randn(64, 6)
    data = (x, model(x).argmax(1))
    df = lesion.sweep(model, data, triage="120s")
    tri = df.attrs["triage"]
    print("\ncalls", calls, "clock", clock[0], "exact", tri["exact"])
    assert len(calls) >= 3, calls  # the pilot, then more than one round
    assert clock[0] <= 120.0, (clock[0], calls)
    assert clock[0] >= 0.75 * 120.0, (clock[0], calls)  # most of the time used
    first = 8 + int((120.0 - 18.0) / (18.0 / 8))  # what the pilot's rate alone would have examined
    assert tri["exact"] > first and tri["exact"] == (df["source"] == "exact").sum() == sum(calls)
    assert tri["top"] + tri["sampled"] <= tri["exact"]
    full = lesion.sweep(model, data, [f"1:{j}" for j in range(400)])  # the exact numbers are exact
    got = df[df["source"] == "exact"]
    np.testing.assert_allclose(got["loss"], full["loss"].to_numpy()[got.index], rtol=1e-6, atol=1e-7)
