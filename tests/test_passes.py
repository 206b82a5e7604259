"""Work is not repeated: forward passes counted with a hook on the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lesion


def passes(model: nn.Module, run) -> int:
    n = [0]
    h = model.register_forward_pre_hook(lambda m, a: n.__setitem__(0, n[0] + 1))
    try:
        run()
    finally:
        h.remove()
    return n[0]


def test_a_one_lesion_sweep_runs_at_most_three_passes():
    """The dry pass that finds the sites, the intact pass, the lesion: the engine is not planned for a
    layer with CHECKS (2) lesions or fewer, whose check would re-run them all on the slow path."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(40, 4), torch.arange(40) % 3
    assert passes(net, lambda: lesion.sweep(net, (x, y), ["1:0"], batch_size=100)) <= 3
    assert passes(net, lambda: lesion.sweep(net, (x, y), ["1:0", "1:1"], batch_size=100)) <= 4
    df = lesion.sweep(net, (x, y), [f"1:{j}" for j in range(6)], batch_size=100)
    assert df.attrs["served"]["graph"] == 6  # more lesions than the checks: the engine serves them


def test_a_one_lesion_sweep_of_a_transformer_runs_at_most_three_passes():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)  # fmt: skip
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = {"input_ids": torch.randint(0, 50, (4, 8))}
    metric = lesion.metrics.NextTokenLoss()
    assert passes(model, lambda: lesion.sweep(model, ids, ["transformer.h.1.mlp.act:3"], metric)) <= 3
    assert passes(model, lambda: lesion.sweep(model, ids, ["transformer.h.0.attn:1"], metric)) <= 3


def test_lesion_analyze_runs_the_intact_model_once_per_split(monkeypatch):
    """Every pass of the intact model over a split is counted (a statistics pass, or the runner's
    intact pass): the statistics pass of each split also measures the intact model, so the unit table,
    the curves and the noise share one pass per split."""
    from lesion.core import runner as runner_module
    from lesion.core import stats as stats_module
    from lesion.data import load_dataset
    from lesion.models import build_model
    from lesion.pipeline import classifier as study

    data = load_dataset("digits", seed=0)
    net = build_model({"kind": "mlp", "input_shape": [1, 8, 8], "widths": [16, 16], "n_classes": 10}, seed=0)
    split = {id(data.y_train): "train", id(data.y_test): "test"}
    passes = {"train": 0, "test": 0}
    real_into, real_collect = runner_module.Runner._into, stats_module.collect_stats

    def into(self, metric, lesion, i):  # one pass of the slow path; lesion None: the intact model
        passes[split[id(self.data[1])]] += lesion is None
        return real_into(self, metric, lesion, i)

    def collect(model, d, *a, **k):
        passes[split[id(d[1])]] += 1
        return real_collect(model, d, *a, **k)

    monkeypatch.setattr(runner_module.Runner, "_into", into)
    for where in ("lesion.core.stats", "lesion.analyses.paper", "lesion.analyses.curves"):
        monkeypatch.setattr(f"{where}.collect_stats", collect)
    config = study.AnalysisConfig(repeats=1, noise_repeats=1, fractions=5)
    from lesion.pipeline.spine import measure

    measure(net, study.classifier_study(data, *study._sites(net, data, None)), config, study.Clock())
    assert passes == {"train": 1, "test": 1}


def test_the_explorer_measures_the_intact_model_once(monkeypatch):
    """The explorer's runner, unit table and curves share one statistics pass that also measures the
    intact model (its top-examples pass is the only other pass without a lesion)."""
    from lesion.core import runner as runner_module
    from lesion.core import stats as stats_module
    from lesion.serve.explorer import Explorer

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(60, 4), torch.arange(60) % 3
    count = [0]
    real_into, real_collect = runner_module.Runner._into, stats_module.collect_stats

    def into(self, metric, lesion, i):  # one pass of the slow path; lesion None: the intact model
        count[0] += lesion is None
        return real_into(self, metric, lesion, i)

    def collect(*a, **k):
        count[0] += 1
        return real_collect(*a, **k)

    monkeypatch.setattr(runner_module.Runner, "_into", into)
    for where in ("lesion.core.stats", "lesion.analyses.paper", "lesion.analyses.curves",
                  "lesion.serve.explorer"):  # fmt: skip
        monkeypatch.setattr(f"{where}.collect_stats", collect)
    ex = Explorer(net, (x, y), curve_repeats=1, curve_points=3)
    assert count[0] == 1
    assert ex.intact.n == 60 and len(ex.units) == 6


def test_a_language_models_analysis_runs_the_intact_model_once(monkeypatch):
    """lesion analyze on a language model: the unit table and the curves share the one intact pass of
    their one set of sequences (the spine's statistics pass, lesion.pipeline.spine)."""
    transformers = pytest.importorskip("transformers")
    from lesion.core import runner as runner_module
    from lesion.core import stats as stats_module
    from lesion.pipeline import classifier as study
    from lesion.pipeline.spine import Study, measure

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, n_inner=8, vocab_size=30, n_positions=8)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    data = {"input_ids": torch.randint(0, 30, (6, 8))}
    sites = lesion.find_sites(model, data, ["transformer.h.0.mlp.act"])
    intact = [0]
    real_into, real_collect = runner_module.Runner._into, stats_module.collect_stats

    def into(self, metric, lesion, i):  # one pass of the slow path; lesion None: the intact model
        intact[0] += lesion is None
        return real_into(self, metric, lesion, i)

    def collect(*a, **k):
        intact[0] += 1
        return real_collect(*a, **k)

    monkeypatch.setattr(runner_module.Runner, "_into", into)
    monkeypatch.setattr("lesion.core.stats.collect_stats", collect)
    metric = lesion.metrics.NextTokenLoss()
    plan = Study(test=data, train=data, sites=sites, candidates=[s.name for s in sites], metric=metric,
                 orders=("importance_high",))  # fmt: skip
    config = study.AnalysisConfig(repeats=1, fractions=3)
    table, curve, noisy = measure(model, plan, config, study.Clock())
    assert intact[0] == 1 and noisy is None
    want = lesion.sweep(model, data, [f"transformer.h.0.mlp.act:{j}" for j in range(8)], metric)
    assert table.delta_loss.tolist() == pytest.approx(want.delta_loss.tolist(), abs=1e-9)
    start = curve[curve.n_ablated == 0].loss.tolist()  # random and importance_high
    assert start == pytest.approx([want.attrs["intact"]["loss"]] * 2, abs=1e-9)
