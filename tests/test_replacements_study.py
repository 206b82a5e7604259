"""T3 (importance under four deletion methods) and T4 (attribution estimate vs exact) on the tiny profile:
tables, claims, the trained decoder in models/, and the statistics on inputs whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lesion.experiments.figures.attribution import _false_negatives
from lesion.experiments.figures.replacements import rank_corr, rho_draws, unit_draws
from lesion.report.reproduce import reproduce

KEYS = {
    "id",
    "claim",
    "paper",
    "measured",
    "statistic",
    "holds",
    "verdict",
    "estimate",
    "ci_low",
    "ci_high",
    "n",
    "needed_n",
    "tests",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("t34")
    return out, reproduce("tiny", out=out, only="T3,T4", workers=1)


def test_claims_and_tables(run):
    out, _ = run
    claims = json.loads((out / "claims.json").read_text())
    assert [c["id"] for c in claims] == ["T3", "T3-optimal", "T3-F7", "T4"]
    for c in claims:
        assert set(c) == KEYS and c["verdict"] in ("holds", "does not hold", "inconclusive")
        assert c["n"] > 0 and c["tests"]
        if c["ci_low"] is not None:
            assert c["ci_low"] <= c["estimate"] <= c["ci_high"]
    assert len(claims[2]["tests"]) == 8  # F7 under 4 methods x 2 classifiers
    imp = pd.read_parquet(out / "tables" / "T3_importance.parquet")
    assert set(imp.method) == {"zero", "mean", "resample", "optimal"}
    assert set(imp.net) == {"mlp", "convnet", "gpt"}
    sizes = imp.groupby(["net", "method"]).size().unstack()
    assert (sizes.nunique(axis=1) == 1).all()  # every unit under every method
    assert set(imp[imp.net == "gpt"].kind) == {"neuron", "head"}
    assert imp[imp.net == "gpt"].selectivity.isna().all() and imp[imp.net == "mlp"].selectivity.notna().any()
    ranks = pd.read_parquet(out / "tables" / "T3_rank_agreement.parquet")
    assert len(ranks) == 3 * 6
    att = pd.read_parquet(out / "tables" / "T4_attribution.parquet")
    assert {"estimate", "exact", "false_negative", "top_exact"} <= set(att.columns)
    zero = imp[imp.method == "zero"].set_index(["net", "layer", "unit"]).delta_loss
    exact = att.set_index(["net", "layer", "index"]).exact
    exact.index.names = zero.index.names
    # T4's exact effect is T3's zero-replacement loss change, measured by another job
    np.testing.assert_allclose(exact.loc[zero.index].to_numpy(), zero.to_numpy(), rtol=1e-5, atol=1e-6)
    assert (out / "figures" / "T3.png").stat().st_size > 10_000
    assert (out / "figures" / "T4.png").stat().st_size > 10_000


def test_decoder_is_saved_and_loads(run):
    from lesion.models import load_model
    from lesion.pipeline.lm import TextConfig, lm_data

    out, manifest = run
    gpt = [p for p in (out / "models").glob("gpt*.safetensors")]
    assert len(gpt) == 1 and gpt[0].name in manifest["models"]
    net, info = load_model(gpt[0])
    data, name = lm_data(net, info, TextConfig())  # what `lesion serve` / `lesion analyze` read
    assert name == "markov (test)" and data["input_ids"].shape[1] == info["arch"]["context"]
    from lesion.serve.text import explorer_for_file

    assert type(explorer_for_file(gpt[0], sequences=4, say=lambda *_: None)).__name__ == "TextExplorer"


def test_rank_corr_and_bootstrap_know_the_answer():
    x = np.arange(10.0)
    assert rank_corr(np.c_[x, x**3]) == pytest.approx(1.0)
    assert rank_corr(np.c_[x, -x]) == pytest.approx(-1.0)
    assert np.isnan(rank_corr(np.c_[x, np.ones(10)]))
    rng = np.random.default_rng(0)
    y = np.c_[x, x**2, rng.normal(size=10), np.round(rng.normal(size=10))]  # the last with ties
    idx = unit_draws(10, boot=20)
    d = rho_draws(y, [(0, 1), (0, 2), (2, 3)], idx)  # the vectorised bootstrap against the one-at-a-time one
    slow = [[rank_corr(y[i][:, list(p)]) for p in [(0, 1), (0, 2), (2, 3)]] for i in idx]
    np.testing.assert_allclose(d, slow, atol=1e-12)
    assert np.allclose(d[:, 0][np.isfinite(d[:, 0])], 1.0)


def test_false_negatives_by_hand():
    exact = np.array(
        [10.0, 9.0, 0.1, 0.2, 0.3, 0.1, 0.2, 0.1, 0.3, 0.2, 0.1, 0.2, 0.1, 0.1, 0.2, 0.3, 0.1, 0.2, 0.1, 0.2]
    )
    est = exact.copy()
    est[1] = 0.0  # the second-largest effect gets no estimate: missed
    f = pd.DataFrame({"net": "n", "unit": [f"u:{i}" for i in range(20)], "exact": exact, "estimate": est})
    fn = _false_negatives(f)
    assert list(fn.unit[fn.top_exact]) == ["u:0", "u:1"]
    assert list(fn.unit[fn.false_negative]) == ["u:1"]
