"""T1 (a ViT's neurons and heads vs label corruption) and T2 (deletion robustness through grokking)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lesion.core.batch import Batch
from lesion.experiments.figures.grokking import T2, jump_step, t2_analyse
from lesion.experiments.jobs_vit_grokking import Answer, pairs, unit_kinds
from lesion.experiments.profiles import get_profile
from lesion.models import load_model
from lesion.report.reproduce import reproduce

IDS = ["T1-neurons", "T1-heads", "T2-neurons", "T2-heads"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("t12")
    reproduce("tiny", only=["T1", "T2"], out=out)
    return out


def test_pairs_are_every_sum_mod_p_split_by_a_seed():
    x, y, train, test = pairs(7, 0.3, data_seed=0)
    assert x.shape == (49, 3) and (x[:, 2] == 7).all()
    assert torch.equal(y, (x[:, 0] + x[:, 1]) % 7)
    assert len(train) == 15 and len(test) == 34
    assert sorted(torch.cat([train, test]).tolist()) == list(range(49))
    again = pairs(7, 0.3, data_seed=0)[2]
    assert torch.equal(train, again) and not torch.equal(train, pairs(7, 0.3, data_seed=1)[2])


def test_answer_metric_reads_only_the_last_position():
    # two lesions, two examples, three positions, vocab 3: logits chosen so answers are known on paper
    out = torch.zeros(2, 2, 3, 3)
    out[:, :, :2, 0] = 9.0  # earlier positions say 0: ignored
    out[0, 0, 2, 1] = out[0, 1, 2, 2] = 50.0  # lesion 0: both right (answers 1, 2)
    out[1, 0, 2, 1] = out[1, 1, 2, 0] = 50.0  # lesion 1: the second wrong
    m = Answer()
    m.reset(2)
    m.update(out, Batch((torch.zeros(2, 3),), target=torch.tensor([1, 2]), ids=torch.arange(2)), slice(0, 2))
    r = m.compute()
    np.testing.assert_allclose(r["accuracy"], [1.0, 0.5])
    np.testing.assert_allclose(r["loss"], [0.0, 25.0], atol=1e-6)  # cross-entropy 50 on one of two


def test_jump_step_and_the_lead_on_a_history_known_on_paper(tmp_path):
    """Memorised at 100, test accuracy halfway (0.05 -> 0.95) at 300; the neurons' relative AUC goes
    halfway (0.2 -> 0.8) at 200 (lead +100 steps), the heads' at 400 (lead -100)."""
    steps = [0, 100, 200, 300, 400, 500]
    hist = pd.DataFrame({"step": steps, "train_loss": 0.0, "test_loss": 0.0,
                         "train_accuracy": [0.1, 1, 1, 1, 1, 1],
                         "test_accuracy": [0.0, 0.05, 0.1, 0.6, 0.9, 0.95]})  # fmt: skip
    assert jump_step(hist) == (100.0, 300.0)
    auc = {"neurons": [0.2, 0.2, 0.6, 0.8, 0.8, 0.8], "heads": [0.2, 0.2, 0.3, 0.4, 0.7, 0.8]}
    rows = []
    for units, values in auc.items():
        for s, v in zip(steps, values, strict=True):
            for r in range(2):  # a curve 1 -> 2v - 1 over fraction 0..1 has AUC v (intact accuracy 1)
                rows += [(s, units, r, 0, 0.0, 1.0, 0.0), (s, units, r, 1, 1.0, 2 * v - 1, 0.0)]
    cols = ["step", "units", "repeat", "n_ablated", "fraction", "accuracy", "loss"]
    out = {}
    for s in (0, 1):
        g, c = tmp_path / f"g{s}", tmp_path / f"c{s}"
        g.mkdir(), c.mkdir()
        hist.to_parquet(g / "history.parquet")
        pd.DataFrame(rows, columns=cols).to_parquet(c / "curves.parquet")
        out |= {f"grok_s{s}": g, f"curves_s{s}": c}
    tiny = get_profile("tiny")
    p = tiny.resize("T2", seeds=(0, 1), grok={**T2.size(tiny, "grok"), "every": 100})
    outcome = t2_analyse(p, out)
    neurons, heads = outcome.claims
    assert neurons["id"] == "T2-neurons" and neurons["estimate"] == 100.0
    assert neurons["ci_low"] == neurons["ci_high"] == 100.0 and neurons["verdict"] == "holds"
    assert heads["estimate"] == -100.0 and heads["verdict"] == "does not hold"
    rise = neurons["tests"][1]
    assert rise["estimate"] == pytest.approx(0.6) and rise["verdict"] == "holds"
    leads = outcome.tables["leads"]
    assert set(leads.auc_rise_step[leads.units == "heads"]) == {400.0}


def test_figures_run_on_the_tiny_profile(run):
    claims = {c["id"]: c for c in json.loads((run / "claims.json").read_text())}
    assert list(claims) == IDS
    for c in claims.values():
        assert c["verdict"] in ("holds", "does not hold", "inconclusive") and c["measured"] and c["tests"]
        assert c["n"] == c["tests"][0]["n"] > 0  # runs there were, even where none grokked
    t1 = pd.read_parquet(run / "tables" / "T1_curves.parquet")
    assert set(t1.units) == {"neurons", "heads"} and set(t1.corrupt) == {0.0, 0.5, 1.0}
    assert t1.groupby("units").n_ablated.max().to_dict() == {"neurons": 64, "heads": 2}  # 1 block: 4x16, 2
    auc = pd.read_parquet(run / "tables" / "T1_auc.parquet")
    assert auc.auc.between(0, 1).all()
    t2 = pd.read_parquet(run / "tables" / "T2_history.parquet")
    assert sorted(t2.step.unique()) == [0, 30, 60, 90, 120] and set(t2.seed) == {0, 1}
    t2a = pd.read_parquet(run / "tables" / "T2_auc.parquet")
    assert set(t2a.units) == {"neurons", "heads"} and len(t2a) == 2 * 5 * 2 * 2  # seeds, steps, kinds, orders
    for fid in ("T1", "T2"):
        assert (run / "figures" / f"{fid}.png").stat().st_size > 10_000
    page = (run / "report.html").read_text()
    assert all(i in page for i in IDS)


def test_models_and_checkpoints_load(run):
    names = sorted(p.name for p in (run / "models").glob("*.safetensors"))
    vits = [n for n in names if n.startswith("vit")]
    grok = [n for n in names if n.startswith("gpt1x16_add11")]
    assert len(vits) == 3 and len(grok) == 2 * 6  # final + 5 checkpoints per seed
    model, info = load_model(run / "models" / vits[0])
    assert unit_kinds(model) == {"neurons": ["h.0.mlp.act"], "heads": ["h.0.attn"]}
    ckpt = next(n for n in grok if n.endswith("step000060.safetensors"))
    model, info = load_model(run / "models" / ckpt)
    assert info["metadata"]["step"] == 60 and len(info["extra"]["train_pairs"]) == 60
    x, y, train, _ = pairs(11, 0.5)
    assert torch.equal(info["extra"]["train_pairs"], train)
    assert model(x[:4]).shape == (4, 3, 12)
    hist = pd.read_parquet(run / "tables" / "T2_history.parquet")
    row = hist[(hist.seed == int(ckpt.split("seed")[1][0])) & (hist.step == 60)].iloc[0]
    with torch.no_grad():
        acc = (model(x[train])[:, -1].argmax(-1) == y[train]).float().mean().item()
    assert acc == pytest.approx(row.train_accuracy)  # the checkpoint is the model the history measured


def test_t2_jobs_are_one_grok_and_one_curves_job_per_seed():
    jobs = T2.jobs(get_profile("quick"))
    assert sorted(jobs) == ["curves_s0", "curves_s1", "grok_s0", "grok_s1"]
    assert jobs["curves_s0"].deps["model"].key == jobs["grok_s0"].key
    assert jobs["grok_s0"].params["weight_decay"] == 1.0
