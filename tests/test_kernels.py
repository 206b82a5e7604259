"""The engine's lean forms of composite activations (``lesion.engine.kernels``) equal the model's own
forward bit for bit, step aside wherever that could fail, leave the model as it was, and change no number
of a sweep; and next-token scoring on the logits in place equals a one-shot computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lesion
import lesion.engine.kernels as kernels
from lesion.core.batch import Batch
from tests.test_subset_checks import gpt2

transformers = pytest.importorskip("transformers")
from transformers.activations import FastGELUActivation, NewGELUActivation  # noqa: E402

FORMS = [NewGELUActivation, FastGELUActivation]
SPECIAL = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e30, -1e30, 1e-30, 3.0, -3.0]


def lean(module):
    return kernels.lean_forwards(module)[module]


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (NaN where NaN), same shape and dtype."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))


@pytest.mark.parametrize("cls", FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_each_lean_form_equals_the_models_own_forward_bit_for_bit(cls, dtype, monkeypatch):
    monkeypatch.setattr(kernels, "CHUNK", 1000)  # several chunks, the last one short
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(7, 13, 37, generator=g) * 4).to(dtype)
    x.view(-1)[: len(SPECIAL)] = torch.tensor(SPECIAL).to(dtype)
    module = cls()
    with torch.no_grad():
        assert same(lean(module)(x), module(x))
        t = x.transpose(0, 2)  # not contiguous: the module's own forward, its layout kept
        assert same(lean(module)(t), module(t)) and lean(module)(t).stride() == module(t).stride()
        assert same(lean(module)(x[:0]), module(x[:0]))  # empty


def test_lean_forms_step_aside_where_they_could_differ(monkeypatch):
    module = NewGELUActivation()
    calls = []
    monkeypatch.setattr(kernels, "_new_gelu", lambda *a: calls.append(1) or kernels._fast_gelu(*a))
    f = lean(module)
    x = torch.randn(4, 8, requires_grad=True)
    y = f(x)  # gradient on: the model's own forward, differentiable
    assert y.requires_grad and not calls and same(y, module(x))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert same(f(x), module(x)) and not calls
    with torch.no_grad():
        assert same(f(torch.arange(6)), module(torch.arange(6))) and not calls  # integers
        f(x)
    assert calls == [1]  # and it does run where it holds

    class Mine(NewGELUActivation):  # a subclass may compute something else
        def forward(self, input):
            return input * 2

    own = NewGELUActivation()
    own.forward = lambda input: input * 3  # an instance's own forward is kept
    model = torch.nn.Sequential(Mine(), own, NewGELUActivation(), torch.nn.ReLU())
    assert list(kernels.lean_forwards(model)) == [model[2]]
    monkeypatch.setattr(kernels, "LEAN", False)
    assert kernels.lean_forwards(model) == {}


def test_a_sweep_gives_the_same_numbers_with_and_without_the_lean_forms(monkeypatch):
    model = gpt2()
    data = [{"input_ids": torch.randint(0, 40, (6, 12), generator=torch.Generator().manual_seed(s))}
            for s in range(2)]  # fmt: skip
    units = [f"transformer.h.{b}.attn:{h}" for b in range(2) for h in range(4)]
    units += [f"transformer.h.{b}.mlp.act:{j}" for b in range(2) for j in range(0, 64, 9)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    real = kernels._new_gelu
    monkeypatch.setattr(kernels, "_new_gelu", lambda *a: calls.append(1) or real(*a))
    on = lesion.sweep(model, data, units, lesion.metrics.NextTokenLoss())
    assert calls, "the engine's passes did not use the lean form"
    served = on.attrs["served"]
    assert served["prefix"] + served["closed"] == len(units) and served["prefix"] >= 8 + 7  # heads, block 0
    monkeypatch.setattr(kernels, "LEAN", False)
    calls.clear()
    off = lesion.sweep(model, data, units, lesion.metrics.NextTokenLoss())
    assert not calls
    for col in ("loss", "accuracy"):
        assert np.array_equal(on[col].to_numpy(), off[col].to_numpy())
    assert all("forward" not in m.__dict__ for m in model.modules())  # every module as it was
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_next_token_scoring_equals_a_one_shot_computation():
    g = torch.Generator().manual_seed(3)
    k, b, s, v = 3, 4, 9, 11
    logits = torch.randn(k, b, s, v, generator=g) * 3
    ids = torch.randint(0, v, (b, s), generator=g)
    labels = ids.clone()
    labels[1, 3:6] = -100  # ignored, as in Hugging Face
    mask = torch.ones(b, s, dtype=torch.long)
    mask[2, 6:] = 0
    logits[:, 2, 7] = float("nan")  # a padded position: must not reach any number
    logits[0, 0, 0] = 0.0
    logits[0, 0, 0, ids[0, 1]] = 5.0
    logits[0, 0, 0, (ids[0, 1] + 1) % v] = 5.0  # a tie: argmax takes the first of equal maxima
    logits[1, 0, 0] = 0.0
    logits[1, 0, 0, ids[0, 1]] = 5.0
    logits[1, 0, 0, (ids[0, 1] - 1) % v] = 5.0
    fields = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    batch = Batch((), dict(fields), fields=fields, ids=torch.arange(b))
    metric = lesion.metrics.NextTokenLoss()
    metric.reset(k)
    metric.update(logits, batch, slice(0, k))
    got = metric.compute()
    valid = (labels[:, 1:] != -100) & mask[:, 1:].bool() & mask[:, :-1].bool()
    for i in range(k):
        sel, target = logits[i, :, :-1][valid].double(), labels[:, 1:][valid]
        assert got["loss"][i] == pytest.approx(F.cross_entropy(sel, target).item(), rel=1e-6)
        assert got["accuracy"][i] == (sel.argmax(-1) == target).double().mean().item()
    first = ids[0, 1] < (ids[0, 1] + 1) % v  # lesion 0's tie: right iff the target is the lower index
    second = (ids[0, 1] - 1) % v > ids[0, 1]  # lesion 1's tie: right iff the other index is higher
    assert (logits[0, 0, 0].argmax() == ids[0, 1]) == bool(first)
    assert (logits[1, 0, 0].argmax() == ids[0, 1]) == bool(second)
