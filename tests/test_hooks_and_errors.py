"""Hooks are borrowed, never leaked; bad input gets a clear error of lesion's own family."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

import lesion
from lesion.core.batch import LesionNote
from lesion.core.units import Unit, parse_units
from tests.toys import ToyConv, ToyMLP, toy_data, toy_images


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def weights_hash(model):
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_no_hook_survives_success_exception_or_nesting():
    model, (x, y) = ToyMLP(), toy_data()
    before, intact = weights_hash(model), model(x).detach()
    with lesion.ablate(model, "act:1"):  # a root pre-hook finds the site on the first pass, then hooks it
        assert n_hooks(model) == 1
        model(x)
        assert n_hooks(model) == 2
        with lesion.ablate(model, "act:2"), lesion.ablate(model, "fc:0"):
            model(x)
            assert n_hooks(model) == 6
        assert n_hooks(model) == 2
    assert n_hooks(model) == 0
    with pytest.raises(RuntimeError, match="boom"), lesion.ablate(model, ["act:0-3", "out:1"]):
        raise RuntimeError("boom")
    assert n_hooks(model) == 0
    with pytest.raises(lesion.errors.UnitError), lesion.ablate(model, "act:9"):
        model(x)  # index checked at the first forward pass, hooks still removed
    assert n_hooks(model) == 0
    lesion.unit_table(model, (x, y))
    lesion.ablation_curves(model, (x, y), repeats=2)
    lesion.noise_curves(model, (x, y), repeats=1, scales=[1.0])
    assert n_hooks(model) == 0
    assert weights_hash(model) == before
    assert torch.equal(model(x), intact)
    assert not hasattr(model, "_lesion")  # nothing set on the model


def test_nested_lesions_compose():
    model, (x, _) = ToyMLP(), toy_data()
    with lesion.ablate(model, "act:2"), lesion.ablate(model, "act:3"):
        both = model(x)
    with lesion.ablate(model, "act:2-3"):
        assert torch.equal(model(x), both)


def test_training_flags_are_restored():
    model, data = ToyConv(batchnorm=True), toy_images()
    model.train()
    model.bn.eval()  # a mixed state the user chose
    lesion.unit_table(model, data)
    assert model.training and model.conv.training and not model.bn.training
    assert model.bn.running_var.tolist() == [4.0] * 5  # eval-mode BN: statistics untouched


def test_unknown_layer_names_closest_and_valid_sites():
    model, (x, _y) = ToyMLP(), toy_data()
    sites = lesion.find_sites(model, x[:2])
    with pytest.raises(lesion.errors.SiteError) as err:
        parse_units("actt:1", sites)
    msg = str(err.value)
    assert "'actt'" in msg and "closest: act" in msg and "act (5)" in msg
    with pytest.raises(lesion.errors.SiteError, match="closest: act"):
        lesion.find_sites(model, x[:2], layers=["acts"])
    with pytest.raises(lesion.errors.SiteError, match="unknown layer 'fc9'"), lesion.ablate(model, "fc9:0"):
        pass


def test_unit_index_out_of_range():
    model, (x, _) = ToyMLP(), toy_data()
    sites = lesion.find_sites(model, x[:2])
    with pytest.raises(
        lesion.errors.UnitError, match=r"unit index 5 out of range for layer 'act': expected 0..4"
    ):
        parse_units("act:3-5", sites)
    with pytest.raises(lesion.errors.UnitError, match="out of range"), lesion.ablate(model, "act:7"):
        model(x)


@pytest.mark.parametrize("bad", ["act", "act:", ":3", "act:x", "act:5-2", "act:-1"])
def test_unparseable_addresses(bad):
    with pytest.raises(lesion.errors.UnitError, match="expected"):
        parse_units(bad)


def test_unit_address_forms():
    assert parse_units("features.3:17").to_strings() == ["features.3:17"]
    assert parse_units("a:0-2,5").to_strings() == ["a:0", "a:1", "a:2", "a:5"]
    assert parse_units([("a", 1), Unit("b", 0), "a:0"]).to_strings() == ["a:0", "a:1", "b:0"]
    assert parse_units({"a": [3, 1], "b": None}).to_strings() == ["a:1", "a:3", "b:*"]
    sites = lesion.find_sites(ToyMLP(), toy_data()[0][:2], layers="all")
    assert [s.name for s in sites] == ["fc", "act", "out"]
    assert parse_units("act:*", sites).count() == 5
    odd = parse_units(lambda u: u.layer == "act" and u.index % 2 == 1, sites)
    assert odd.to_strings() == ["act:1", "act:3"]
    assert Unit.parse("x.y:4") == Unit("x.y", 4) and str(Unit("x.y", 4)) == "x.y:4"


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(self.act(out[:, -1]))


def test_site_with_non_tensor_output():
    model, x = TupleOut(), torch.zeros(2, 5, 3)
    with pytest.raises(lesion.errors.SiteError, match="'lstm' outputs a tuple, not a tensor"):
        lesion.find_sites(model, x, layers=["lstm"])
    with pytest.raises(lesion.errors.SiteError, match="outputs a tuple"), lesion.ablate(model, "lstm:0"):
        model(x)
    assert [s.name for s in lesion.find_sites(model, x)] == ["act"]


def test_reused_module_is_ambiguous():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(2, 2), relu, nn.Linear(2, 2), relu)
    with pytest.raises(lesion.errors.SiteError, match="runs 2 times per forward pass"):
        lesion.find_sites(model, torch.zeros(1, 2), layers=["1"])
    with pytest.raises(
        lesion.errors.SiteError, match=r"module '1' runs 2 times.*give each call its own module"
    ):
        lesion.find_sites(model, torch.zeros(1, 2))  # refused, never silently an empty list
    ok = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), relu, nn.Linear(2, 2), relu)
    with pytest.warns(LesionNote, match="'3' run more than once"):
        assert [s.name for s in lesion.find_sites(ok, torch.zeros(1, 2))] == ["1"]  # the others still count
    with pytest.raises(lesion.errors.SiteError, match="runs 2 times"), lesion.ablate(model, "1:0"):
        model(torch.zeros(1, 2))


def test_bad_data_is_refused():
    model, (x, y) = ToyMLP(), toy_data()
    with pytest.raises(lesion.errors.DataError, match="model failed on inputs of shape"):
        lesion.evaluate(model, (torch.zeros(4, 7), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(lesion.errors.DataError, match=r"label 5 is out of range.*expected labels 0\.\.1"):
        lesion.evaluate(model, (x, torch.full((8,), 5)))
    with pytest.raises(lesion.errors.DataError, match="no examples"):
        lesion.evaluate(model, (x[:0], y[:0]))
    with pytest.raises(lesion.errors.DataError, match="no examples"):
        lesion.evaluate(model, [])
    with pytest.raises(lesion.errors.DataError, match="same length"):
        lesion.evaluate(model, (x, y[:3]))
    with pytest.raises(lesion.errors.DataError, match="expected integer class indices"):
        lesion.evaluate(model, (x, y.float()))
    with pytest.raises(lesion.errors.DataError, match="earlier batches had"):
        lesion.evaluate(model, [(x, y), (torch.zeros(2, 4), y[:2])])
    with pytest.raises(lesion.errors.DataError, match="negative"):
        lesion.evaluate(model, (x, -y - 1))
    with pytest.raises(lesion.errors.DataError, match="expected an"):
        lesion.evaluate(model, 42)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    assert lesion.evaluate(model, loader).accuracy == 1.0


def test_errors_are_one_family():
    for cls in (
        lesion.errors.SiteError,
        lesion.errors.UnitError,
        lesion.errors.DataError,
        lesion.errors.ModelFileError,
    ):
        assert issubclass(cls, lesion.LesionError)
