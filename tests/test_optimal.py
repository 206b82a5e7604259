"""Optimal ablation's fit: its fast forward paths (the traced layers after the site; the stubbed modules
before it) give the constants the hooked full model gives, its blocks of copies are sized by measured
bytes, and a fast path that disagrees with the full model is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lesion
import lesion.engine.optimal as optimal
from lesion import Lesion
from lesion.analyses.sweep import sites_for
from lesion.engine.graph import Plan, Unsupported
from lesion.engine.prefix import PrefixEngine


def _convnet():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 3 * 3, 10), nn.ReLU(), nn.Linear(10, 3),
    )  # fmt: skip
    x = torch.randn(40, 1, 8, 8)
    y = (x[:, 0, :4].sum((1, 2)) > 0).long() + (x[:, 0, 4:].sum((1, 2)) > 2).long()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), (x, y)


def _fit(model, data, steps=8):
    sites = {s.name: s for s in sites_for(model, data)}
    lesions = [
        Lesion(f"{n}:{j}", lesion.replacements.Optimal(steps=steps))
        for n, s in sites.items()
        for j in range(s.width)
    ]
    return lesions[0].replacement.fit(model, data, sites, lesions)


def _no_fast_paths(monkeypatch):
    def refuse(*_a, **_k):
        raise Unsupported("forced off by the test")

    monkeypatch.setattr(Plan, "__init__", refuse)
    monkeypatch.setattr(PrefixEngine, "stubbing", refuse)


def _same(a, b, tol):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= tol, worst


def test_traced_suffix_fits_the_constants_of_the_full_model(monkeypatch):
    model, data = _convnet()
    flags = [p.requires_grad for p in model.parameters()]
    fast = _fit(model, data)
    assert set(fast.paths.values()) == {"layers after the site (checked against the full model)"}
    assert [p.requires_grad for p in model.parameters()] == flags  # restored after the fit
    assert all(p.grad is None for p in model.parameters())
    _no_fast_paths(monkeypatch)
    slow = _fit(model, data)
    assert all(p.startswith("full model") for p in slow.paths.values())
    _same(fast.constants, slow.constants, 1e-5)


def test_blocks_sized_by_measured_bytes_give_the_same_constants(monkeypatch):
    """Each layer's first copy measures its bytes, which size that layer's blocks: with a budget of 2.5
    copies of the first layer, it fits 2 copies per block (later layers, with fewer layers after them,
    more); the constants equal those fitted 64 copies at a time (each copy's loss and Adam are its own)."""
    model, data = _convnet()
    wide = _fit(model, data)
    calls = []
    real = optimal._fit_block

    def spy(opt, forward, sets, batch, means, measure=False):
        got = real(opt, forward, sets, batch, means, measure)
        calls.append((len(sets), measure, got[1]))
        return got

    monkeypatch.setattr(optimal, "_fit_block", spy)
    _fit(model, data)
    one = calls[0][2]
    assert one > 40 * 4 * 8 * 8 * 4  # at least the first layer's activity for 40 examples, in bytes
    budget = int(2.5 * one)
    monkeypatch.setattr(optimal, "FIT_BYTES", budget)
    calls.clear()
    narrow = _fit(model, data)
    assert [k for k, m, _ in calls if m] == [1] * 3  # one measured copy per layer (3 ReLUs)
    per_layer, blocks = [], []
    for k, measured, size in calls:
        if measured:
            per_layer.append(size)
            blocks.append([])
        else:
            blocks[-1].append(k)
    assert max(blocks[0]) == 2
    for size, ks in zip(per_layer, blocks, strict=True):
        assert max(ks, default=1) <= max(1, min(64, budget // size))
    _same(wide.constants, narrow.constants, 1e-5)


def test_a_fast_path_that_disagrees_is_refused(monkeypatch):
    model, data = _convnet()
    _no_fast_paths(monkeypatch)
    slow = _fit(model, data)
    monkeypatch.undo()
    real = optimal._Forward._suffix
    monkeypatch.setattr(optimal._Forward, "_suffix", lambda self, k, edit: real(self, k, edit) + 0.5)
    wrong = _fit(model, data)
    assert all("disagreed with the full model" in p for p in wrong.paths.values()), wrong.paths
    _same(wrong.constants, slow.constants, 1e-5)


def test_stubbed_prefix_fits_the_constants_of_the_full_model_on_a_transformer(monkeypatch):
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tf.GPT2Config(
        n_layer=2, n_embd=16, n_head=4, n_positions=8, vocab_size=11, bos_token_id=0, eos_token_id=0
    )
    model = tf.GPT2LMHeadModel(cfg).eval()
    data = [{"input_ids": torch.randint(1, 11, (6, 8), generator=torch.Generator().manual_seed(1))}]
    sites = {s.name: s for s in sites_for(model, data)}
    chosen = ["transformer.h.1.attn", "transformer.h.1.mlp.act", "transformer.h.0.attn"]
    lesions = [Lesion(f"{n}:{j}", lesion.replacements.Optimal(steps=6)) for n in chosen for j in range(3)]
    fast = lesions[0].replacement.fit(model, data, sites, lesions)
    assert set(fast.paths.values()) == {"modules before the site stubbed (checked against the full model)"}
    _no_fast_paths(monkeypatch)
    slow = lesions[0].replacement.fit(model, data, sites, lesions)
    _same(fast.constants, slow.constants, 1e-5)
    assert lesion.sweep(model, data, lesions[:3], lesion.metrics.NextTokenLoss()).loss.notna().all()
