"""The second-generation core: lesion x replacement x metric, on models that are not plain classifiers.

Every expected number is computed on paper or by an independent implementation written here.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lesion
from lesion import Lesion
from lesion.core.batch import Batch, LesionNote
from lesion.core.metric import MetricError


# ----------------------------------------------------------------------------- hand-computed toys
class SeqMLP(nn.Module):
    """(batch, seq, 2) -> fc -> act (4 neurons at every position) -> out (weights 1, 2, 3, 4)."""

    def __init__(self):
        super().__init__()
        self.fc, self.act, self.out = nn.Linear(2, 4, bias=False), nn.ReLU(), nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [1, 1], [2, 0]]))
            self.out.weight.copy_(torch.tensor([[1.0, 2, 3, 4]]))

    def forward(self, x):
        return self.out(self.act(self.fc(x)))


SEQ_X = torch.tensor([[[1.0, 2], [3, 0], [0, 1], [1, 1]]])  # h3 = 2, 6, 0, 2; outputs 22, 36, 5, 17


def mean_output(out, batch):
    return out.reshape(out.shape[0], -1).mean(1)


def test_sequence_neuron_at_every_position_and_at_one():
    model = SeqMLP()
    df = lesion.sweep(
        model, SEQ_X, ["act:3", "act:3@1", "act:3@-1", "act:0@0,1"], lesion.metrics.Scalar(mean_output, "y")
    )
    assert df.attrs["intact"]["y"] == pytest.approx(20.0)  # (22 + 36 + 5 + 17) / 4
    # neuron 3 (weight 4) removes 4 * (2 + 6 + 0 + 2) = 40 over 4 positions; at position 1 only 24; last 8;
    # neuron 0 (weight 1) at positions 0 and 1 removes 1 + 3
    assert df.delta_y.tolist() == pytest.approx([-10.0, -6.0, -2.0, -1.0])
    assert list(df.lesion) == ["act:3", "act:3@1", "act:3@-1", "act:0@0,1"]
    with lesion.ablate(model, "act:3"):  # no sites given: the same unit axis rule (neurons, not positions)
        assert model(SEQ_X).sum().item() == pytest.approx(40.0)


def test_position_beyond_the_sequence_and_positions_on_a_flat_site():
    with pytest.raises(lesion.errors.UnitError, match="position 9 is beyond the sequence of 4"):
        lesion.sweep(SeqMLP(), SEQ_X, ["act:3@9"], lesion.metrics.Scalar(mean_output))
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    with pytest.raises(lesion.errors.UnitError, match="no sequence axis"), lesion.ablate(net, "1:0@0"):
        net(torch.ones(2, 2))


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.act, self.out = nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [1, 1]]))
            self.out.weight.fill_(1.0)

    def forward(self, x):
        return self.out(self.act(self.fc(x)))


def test_regression_under_mse():
    x = torch.tensor([[1.0, 2], [3, 1]])
    y = 2 * x.sum(1)  # the intact model is exact: out = x0 + x1 + (x0 + x1)
    df = lesion.sweep(Regressor(), (x, y), ["act:0", "act:2"], lesion.metrics.MSE())
    assert df.attrs["intact"]["mse"] == pytest.approx(0.0)
    assert df.mse.tolist() == pytest.approx([(1 + 9) / 2, (9 + 16) / 2])  # errors x0; x0 + x1


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fa, self.fb = nn.Linear(1, 2, bias=False), nn.Linear(1, 2, bias=False)
        self.act, self.head = nn.ReLU(), nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fa.weight.copy_(torch.tensor([[1.0], [2.0]]))
            self.fb.weight.copy_(torch.tensor([[1.0], [0.0]]))
            self.head.weight.copy_(torch.eye(2))

    def forward(self, a, b):
        return self.head(self.act(self.fa(a) + self.fb(b)))


def test_two_input_model():
    a, b, y = torch.tensor([[1.0]]), torch.tensor([[3.0]]), torch.tensor([0])
    df = lesion.sweep(TwoInputs(), ((a, b), y), ["act:0", "act:1"])  # logits (4, 2) intact
    assert df.attrs["intact"]["loss"] == pytest.approx(math.log(1 + math.exp(-2)))
    assert df.loss.tolist() == pytest.approx(
        [math.log(1 + math.exp(2)), math.log(1 + math.exp(-4))], abs=1e-6
    )
    assert df.accuracy.tolist() == [0.0, 1.0]
    dict_batches = [{"a": a, "b": b, "labels": y}]
    assert lesion.sweep(TwoInputs(), dict_batches, ["act:0"]).loss.tolist() == pytest.approx(df.loss[:1])


# ----------------------------------------------------------------------------- replacements
def mlp(seed=0, d=5, h=8, c=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c))


def manual_loss(model, x, y, edit):
    """Cross-entropy of ``model`` with ``edit(h)`` applied to the hidden activity, written out by hand."""
    h = edit(torch.relu(model[0](x)))
    return F.cross_entropy(model[2](h), y).item()


def test_resample_is_the_same_seeded_permutation_done_by_hand():
    model, x, y = mlp(), torch.randn(10, 5), torch.arange(10) % 3
    df = lesion.sweep(model, (x, y), [Lesion("1:1", lesion.replacements.Resample(seed=3))], batch_size=4)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    h_all = torch.relu(model[0](x)).detach()

    def edit(h):
        h = h.clone()
        h[:, 1] = h_all[perm, 1]
        return h

    assert df.loss[0] == pytest.approx(manual_loss(model, x, y, edit), abs=1e-6)
    two = lesion.sweep(model, (x, y), [Lesion("1:1", lesion.replacements.Resample(seed=3, repeats=2))])
    perm4 = torch.randperm(10, generator=torch.Generator().manual_seed(4))  # the second draw: seed + 1

    def edit4(h):
        return torch.cat([h[:, :1], h_all[perm4][:, 1:2], h[:, 2:]], 1)

    # the mean over draws of per-example losses: the average of the two draws' mean losses
    assert two.loss[0] == pytest.approx((df.loss[0] + manual_loss(model, x, y, edit4)) / 2, abs=1e-6)


def test_patch_is_a_manual_two_pass_implementation():
    model, x, y = mlp(1), torch.randn(6, 5), torch.arange(6) % 3
    source = torch.randn(6, 5)
    df = lesion.sweep(model, (x, y), [Lesion("1:0-1", lesion.replacements.Patch(source))], batch_size=4)
    h_src = torch.relu(model[0](source)).detach()  # pass 1: the source's activity

    def edit(h):  # pass 2: the base input with the patched units
        h = h.clone()
        h[:, :2] = h_src[:, :2]
        return h

    assert df.loss[0] == pytest.approx(manual_loss(model, x, y, edit), abs=1e-6)
    with pytest.raises(lesion.LesionError, match="Patch source has 4 examples; the data has 6"):
        lesion.sweep(model, (x, y), [Lesion("1:0", lesion.replacements.Patch(source[:4]))])
    patched = lesion.ablate(model, Lesion("1:0", lesion.replacements.Patch(source[:4])))
    with pytest.raises(lesion.LesionError, match="Patch source has 4 examples but the batch has 6"), patched:
        model(x)


def test_mean_and_positional_mean_by_hand():
    model, x, y = mlp(2), torch.randn(12, 5), torch.arange(12) % 3
    h_mean = torch.relu(model[0](x)).detach().mean(0)
    df = lesion.sweep(model, (x, y), [Lesion("1:4", lesion.replacements.Mean())])

    def edit(h):
        h = h.clone()
        h[:, 4] = h_mean[4]
        return h

    assert df.loss[0] == pytest.approx(manual_loss(model, x, y, edit), abs=1e-6)
    seq = SeqMLP()
    xs = torch.rand(5, 4, 2)
    per_pos = torch.relu(seq.fc(xs)).detach().mean(0)  # (positions, neurons)
    got = lesion.sweep(
        seq,
        xs,
        [Lesion("act:3", lesion.replacements.PositionalMean())],
        lesion.metrics.Scalar(mean_output, "y"),
    )
    h = torch.relu(seq.fc(xs)).detach()
    h[:, :, 3] = per_pos[:, 3]
    assert got.y[0] == pytest.approx(seq.out(h).mean().item(), abs=1e-5)


def test_optimal_is_never_worse_than_zero_or_mean():
    torch.manual_seed(0)
    x = torch.randn(300, 6)
    y = (x[:, :3].argmax(1) + (x[:, 3] > 1).long()) % 3
    model = mlp(3, d=6, h=12)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad()
    losses = {
        name: lesion.unit_table(model, (x, y), replacement=rep)["loss"].to_numpy()
        for name, rep in (
            ("zero", lesion.replacements.Zero()),
            ("mean", lesion.replacements.Mean()),
            ("optimal", lesion.replacements.Optimal()),
        )
    }
    assert np.all(losses["optimal"] <= np.minimum(losses["zero"], losses["mean"]) + 1e-4)
    assert np.any(losses["optimal"] < np.minimum(losses["zero"], losses["mean"]) - 1e-4)  # it does fit
    assert all(p.grad is None for p in model.parameters())  # the user's model is not touched


# ----------------------------------------------------------------------------- metrics
def one_shot_next_token(logits, ids, mask):
    total, n = 0.0, 0
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if mask[b, t] and mask[b, t + 1]:
                total += F.cross_entropy(logits[b, t][None], ids[b, t + 1][None]).item()
                n += 1
    return total / n


def update(metric, out, batch, intact=None):
    metric.reset(out.shape[0])
    metric.update(out, batch, slice(0, out.shape[0]), intact=intact)
    return metric.compute()


def test_metrics_equal_one_shot_computations():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 5, 7)  # (lesions, batch, seq, vocab)
    ids = torch.randint(0, 7, (3, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    fields = {"input_ids": ids, "attention_mask": mask}
    b = Batch((), dict(fields), fields=fields,
              ids=torch.arange(3))  # fmt: skip
    got = update(lesion.metrics.NextTokenLoss(), logits, b)
    assert got["loss"] == pytest.approx(
        [one_shot_next_token(logits[i], ids, mask) for i in range(2)], abs=1e-5
    )
    intact = torch.randn(3, 5, 7)
    kl = update(lesion.metrics.KL(), logits, b, intact)["kl"]
    p = F.softmax(intact, -1)
    want = [
        ((p * (p.log() - F.log_softmax(logits[i], -1))).sum(-1) * mask).sum() / mask.sum() for i in range(2)
    ]
    assert kl == pytest.approx([w.item() for w in want], abs=1e-5)
    diff = update(lesion.metrics.LogitDiff(2, 4), logits, b)["logit_diff"]
    last = mask.sum(1) - 1
    want = [(logits[i, range(3), last, 2] - logits[i, range(3), last, 4]).mean().item() for i in range(2)]
    assert diff == pytest.approx(want, abs=1e-5)
    cls_logits, y = torch.randn(2, 6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    cls = update(
        lesion.metrics.Classification(), cls_logits, Batch((torch.zeros(6),), target=y, ids=torch.arange(6))
    )
    assert cls["loss"] == pytest.approx(
        [F.cross_entropy(cls_logits[i], y).item() for i in range(2)], abs=1e-6
    )
    want = [(cls_logits[i].argmax(1) == y).double().mean().item() for i in range(2)]
    assert cls["accuracy"].tolist() == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize(
    "make",
    [lesion.metrics.Classification, lesion.metrics.NextTokenLoss, lambda: lesion.metrics.LogitDiff(1, 2)],
)
def test_merge_of_shards_equals_the_whole(make):
    torch.manual_seed(2)
    ids = torch.randint(0, 7, (6, 4))
    logits = torch.randn(3, 6, 4, 7) if make is not lesion.metrics.Classification else torch.randn(3, 6, 7)
    y = ids[:, 0]
    batch = Batch(
        (ids,), target=None if make is not lesion.metrics.Classification else y, ids=torch.arange(6)
    )
    whole = update(make(), logits, batch)
    a, b = make(), make()
    a.reset(3), b.reset(3)
    a.update(logits[:, :2], batch.slice(0, 2), slice(0, 3))
    b.update(logits[:, 2:], batch.slice(2, 6), slice(0, 3))
    merged = a.merge(b).compute()
    for k in whole:
        np.testing.assert_allclose(merged[k], whole[k], rtol=1e-6, atol=1e-9)


def test_every_table_reports_delta_of_every_metric_output():
    model, x, y = mlp(4), torch.randn(20, 5), torch.arange(20) % 3
    df = lesion.sweep(model, (x, y), ["1:0"], lesion.metrics.Scalar(lambda out, b: out[:, 0], "logit0"))
    assert {"logit0", "delta_logit0"} <= set(df.columns)
    cls = lesion.sweep(model, (x, y), ["1:0"])
    assert {"loss", "accuracy", "delta_loss", "delta_accuracy", "delta_accuracy_class_2"} <= set(cls.columns)


# ----------------------------------------------------------------------------- curve bugs (regressions)
def test_orders_of_different_lengths_each_measured_to_their_own_end():
    model, x, y = mlp(5), torch.randn(30, 5), torch.arange(30) % 3
    full = [f"1:{i}" for i in range(8)]
    short = ["1:3", "1:5"]
    curves = lesion.ablation_curves(model, (x, y), orders=[full, short])
    mine = curves[curves.order == "custom_1"]
    assert mine.n_ablated.max() == 2  # never past the units it deletes
    with lesion.ablate(model, ["1:3", "1:5"]):
        want = lesion.evaluate(model, (x, y))
    last = mine[mine.n_ablated == 2].iloc[0]
    assert (last.accuracy, last.loss) == pytest.approx((want.accuracy, want.loss), abs=1e-6)
    alone = lesion.ablation_curves(model, (x, y), orders=[short])
    assert alone.n_ablated.tolist() == [0, 1, 2]
    aucs = lesion.curve_auc(curves)
    assert sorted(aucs.order) == ["custom_0", "custom_1"]  # two orders, two AUCs, never averaged together
    named = lesion.ablation_curves(model, (x, y), orders={"mine": short, "all": full})
    assert set(named.order) == {"mine", "all"}


# ----------------------------------------------------------------------------- data forms
def test_numpy_float64_and_uint8_are_converted_with_a_note():
    model = mlp(6)
    x, y = np.random.default_rng(0).normal(size=(8, 5)), np.arange(8) % 3
    with pytest.warns(LesionNote, match="float64 converted to float32"):
        got = lesion.evaluate(model, (x, y))
    assert got.loss == pytest.approx(
        lesion.evaluate(model, (torch.tensor(x, dtype=torch.float32), torch.tensor(y))).loss
    )
    with pytest.warns(LesionNote, match="uint8"):
        lesion.evaluate(model, (np.ones((4, 5), dtype=np.uint8), np.zeros(4, dtype=np.int64)))


# ----------------------------------------------------------------------------- bad input
def test_bad_metric_and_replacement_inputs_get_clear_errors():
    model, x, y = mlp(7), torch.randn(10, 5), torch.arange(10) % 3
    with pytest.raises(
        MetricError, match=r"returned shape \(10, 3\); expected one value per example \(10,\)"
    ):
        lesion.sweep(model, (x, y), ["1:0"], lesion.metrics.Scalar(lambda out, b: out))
    with pytest.raises(MetricError, match="NaN"):
        lesion.sweep(model, (x, y), ["1:0"], lesion.metrics.Scalar(lambda out, b: out[:, 0] * float("nan")))
    with pytest.raises(lesion.errors.SiteError, match="unknown layer 'nope'"):
        lesion.sweep(model, (x, y), [Lesion("nope:0", lesion.replacements.Mean())])
    batches = [{"input": x, "labels": y}]
    with pytest.raises(lesion.errors.DataError, match="has no field 'answer'"):
        lesion.sweep(model, batches, ["1:0"], lesion.metrics.LogitDiff("answer", 0))
    assert issubclass(MetricError, lesion.LesionError)


class FunctionalReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(F.relu(self.fc(x)))


def test_model_without_sites_lists_what_it_could_use():
    with pytest.raises(lesion.errors.SiteError, match=r"no activation modules.*layers='all'.*fc \(Linear"):
        lesion.find_sites(FunctionalReLU(), torch.zeros(2, 3))
    assert [s.name for s in lesion.find_sites(FunctionalReLU(), torch.zeros(2, 3), "all")] == ["fc", "out"]


def test_unit_parsing_is_ascii_and_bounded_before_allocation():
    with pytest.raises(lesion.errors.UnitError, match="ASCII digits"):
        lesion.parse_units("relu1:1_000")
    with pytest.raises(lesion.errors.UnitError, match="ASCII digits"):
        lesion.parse_units("relu1:٣")
    with pytest.raises(lesion.errors.UnitError, match="out of range"):
        lesion.parse_units("relu1:0-40000000000", {"relu1": 512})
    with pytest.raises(lesion.errors.UnitError, match="beyond lesion's limit"):
        lesion.parse_units("relu1:0-1000000000")  # beyond the cap when no width is known


# ----------------------------------------------------------------------------- the user's own data
def test_own_data_from_arrays_npz_and_training(tmp_path):
    from lesion.data import from_arrays, from_npz, load_dataset
    from lesion.training.loop import train

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)) + 3.0
    y = (x[:, 0] > 3).astype(np.int64)
    d = from_arrays(x, y, seed=1)
    assert d.input_shape == (4,) and len(d.y_test) == 12 and sorted(set(d.y_test.tolist())) == [0, 1]
    assert d.x_train.mean(0).abs().max() < 1e-5  # standardised with the training split's statistics
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    same = load_dataset(str(tmp_path / "mine.npz"), seed=1)
    assert torch.equal(same.x_test, d.x_test) and same.name == "mine"
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert len(train(model, d, epochs=2)) == 2
    with pytest.raises(lesion.errors.DataError, match="from_arrays"):
        train(model, (torch.tensor(x), torch.tensor(y)))
    with pytest.raises(lesion.errors.DataError, match="expected arrays named x and y"):
        np.savez(tmp_path / "bad.npz", inputs=x)
        from_npz(tmp_path / "bad.npz")
    with pytest.raises(lesion.errors.DataError, match="one label per example"):
        from_arrays(x, y[:5])


class DictOut(nn.Module):
    """A model called with keywords, returning a dict with logits (as Hugging Face models do)."""

    def __init__(self, as_tuple=False):
        super().__init__()
        self.emb, self.act, self.head = nn.Embedding(6, 4), nn.GELU(), nn.Linear(4, 6)
        self.as_tuple = as_tuple

    def forward(self, input_ids, attention_mask=None):
        logits = self.head(self.act(self.emb(input_ids)))
        return (logits, None) if self.as_tuple else {"logits": logits, "hidden": None}


def test_dict_batches_and_dict_or_tuple_outputs_under_next_token_loss():
    torch.manual_seed(3)
    ids = torch.randint(0, 6, (5, 7))
    mask = torch.ones(5, 7, dtype=torch.long)
    mask[0, 5:] = 0
    loader = torch.utils.data.DataLoader(
        [{"input_ids": i, "attention_mask": m} for i, m in zip(ids, mask, strict=True)], batch_size=2
    )
    model = DictOut()
    with pytest.warns(LesionNote, match="act:2@-1"):  # the last position predicts nothing scored
        df = lesion.sweep(model, loader, ["act:1", "act:2@-1"], lesion.metrics.NextTokenLoss())
    assert df.delta_loss[1] == 0
    logits = model(ids)["logits"]
    assert df.attrs["intact"]["loss"] == pytest.approx(one_shot_next_token(logits, ids, mask), abs=1e-5)
    with lesion.ablate(model, "act:1"):  # units on the last axis: neuron 1 at every position
        cut = model(ids)["logits"]
    assert df.loss[0] == pytest.approx(one_shot_next_token(cut, ids, mask), abs=1e-5)
    tup = lesion.sweep(DictOut(as_tuple=True), {"input_ids": ids, "attention_mask": mask}, ["act:1"],
                       lesion.metrics.NextTokenLoss())  # fmt: skip
    assert tup.attrs["intact"]["loss"] > 0


def test_output_forms():
    from collections import OrderedDict

    from lesion.core.batch import output_tensor

    t = torch.ones(2, 3)

    class ModelOutput(OrderedDict):  # the shape of Hugging Face's: a dict with attribute access
        @property
        def logits(self):
            return self["logits"]

    assert output_tensor(ModelOutput(loss=None, logits=t)) is t
    assert output_tensor((t, None)) is t and output_tensor({"scores": t}) is t
    with pytest.raises(lesion.errors.DataError, match="expected a tensor, a tuple starting with one"):
        output_tensor("text")


@pytest.mark.parametrize("engine", [True, False])
def test_kl_to_the_intact_model_in_a_sweep(engine):
    model, x, y = mlp(8), torch.randn(25, 5), torch.arange(25) % 3
    df = lesion.sweep(model, (x, y), ["1:0", "1:1-3"], lesion.metrics.KL(), engine=engine, batch_size=10)
    assert df.attrs["intact"]["kl"] == pytest.approx(0.0, abs=1e-7)
    p = F.log_softmax(model(x), -1).detach()
    for i, units in enumerate(([0], [1, 2, 3])):
        h = torch.relu(model[0](x)).detach()
        h[:, units] = 0
        q = F.log_softmax(model[2](h), -1).detach()
        assert df.kl[i] == pytest.approx((p.exp() * (p - q)).sum(1).mean().item(), abs=1e-6)
    if engine:
        assert df.attrs["engine_fallbacks"] == {}  # single-unit lesions ran on the engine, checked


def test_cli_reads_an_npz_dataset_and_list_options(tmp_path):
    from typer.testing import CliRunner

    from lesion.cli import app

    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 1, 4, 4)).astype(np.float32)
    y = (x.reshape(80, -1)[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    model = tmp_path / "m.safetensors"
    run = CliRunner().invoke
    res = run(app, ["train", "--dataset", str(tmp_path / "mine.npz"), "--widths", "8,8", "--epochs", "2",
                    "--out", str(model)])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = run(app, ["analyze", str(model), "--out", str(tmp_path / "a"), "--repeats", "1", "--fractions", "3",
                    "--noise-repeats", "1", "--layers", "relu1", "--layers", "relu2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["dataset"] == "mine" and summary["candidates"] == ["relu1", "relu2"]


def test_an_npz_larger_than_the_data_limit_is_refused_before_reading(tmp_path, monkeypatch):
    from lesion.data import _arrays, from_npz

    np.savez(tmp_path / "big.npz", x=np.zeros((100, 4)), y=np.zeros(100, dtype=np.int64))
    monkeypatch.setattr(_arrays, "MAX_DATA_BYTES", 1000)  # the real limit is 1 GiB
    with pytest.raises(lesion.errors.DataError, match="over the limit of 1,000 bytes"):
        from_npz(tmp_path / "big.npz")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_classification_refuses_a_non_finite_logit_anywhere(bad):
    """The metric's finiteness check (one min/max pass) catches NaN and either infinity at any place,
    in lesion-major outputs of many lesions as in one."""
    from lesion.core.batch import as_batch
    from lesion.core.metric import Classification
    from lesion.errors import DataError

    y = torch.randint(0, 4, (30,))
    b = as_batch((torch.zeros(30, 2), y))
    for where in [(0, 0, 0), (2, 29, 3), (1, 13, 2)]:
        out = torch.randn(3, 30, 4)
        m = Classification()
        m.reset(3)
        m.update(out, b, slice(0, 3))  # finite: fine
        out[where] = bad
        with pytest.raises(DataError, match="NaN or infinite"):
            m.update(out, b, slice(0, 3))


@pytest.mark.parametrize("shape", [(1000, 10), (7, 3), (300, 64), (50, 65)])
def test_engine_loss_and_prediction_equal_the_plain_formulas_with_ties(shape):
    """The transposed loss and running-maximum prediction the engine's metric uses: equal to
    cross_entropy and argmax, the first of tied maxima winning (integer logits tie often)."""
    from lesion.core.metric import _cross_entropy

    g = torch.Generator().manual_seed(shape[0])
    logits = torch.randint(-2, 3, shape, generator=g).float()
    y = torch.randint(0, shape[1], shape[:1], generator=g)
    ce, pred = _cross_entropy(logits, y)
    torch.testing.assert_close(ce, F.cross_entropy(logits, y, reduction="none"))
    assert torch.equal(pred, logits.argmax(-1))
