"""A language model's cards, part c (what a unit pushes the output towards, by weight products) and part f
(the causal test per token, on a hand-built model whose answer is known), and the default explanation
of a token unit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lesion.roles import build

V, PER = 4, 3  # tokens, and neurons per token of the hand-built model


class RunModel(nn.Module):
    """A hand-built language model: one-hot embeddings; MLP neuron j fires (activity 1) on token j // 3
    and raises that token's logit by ``w``; the residual stream is the logits. On text made of runs of a
    token, deleting a token's neurons hurts predicting that token and deleting other tokens' neurons does
    not (it can only help at a run's first position)."""

    def __init__(self, w: float = 1.0):
        super().__init__()
        self.emb = nn.Embedding(V, V)
        self.up, self.act = nn.Linear(V, V * PER, bias=False), nn.ReLU()
        self.down, self.unembed = nn.Linear(V * PER, V, bias=False), nn.Linear(V, V, bias=False)
        with torch.no_grad():
            self.emb.weight.copy_(torch.eye(V))
            self.unembed.weight.copy_(torch.eye(V))
            self.up.weight.zero_()
            self.down.weight.zero_()
            for j in range(V * PER):
                self.up.weight[j, j // PER] = 1.0
                self.down.weight[j // PER, j] = w

    def forward(self, input_ids):
        x = self.emb(input_ids)
        return self.unembed(x + self.down(self.act(self.up(x))))


def runs(n: int, seq: int = 16, run: int = 4, seed: int = 0) -> torch.Tensor:
    """(n, seq) token ids: runs of ``run`` copies of random tokens."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (n, seq // run), generator=g).repeat_interleave(run, dim=1)


def _seq_positions_loss(net, x, drop=()):
    """(positions,) next-token cross-entropy with the neurons ``drop`` of ``act`` deleted (a hook)."""
    h = None
    if drop:
        h = net.act.register_forward_hook(lambda m, i, o: o.index_fill(-1, torch.tensor(list(drop)), 0.0))
    try:
        with torch.no_grad():
            logits = net(x)
    finally:
        if h is not None:
            h.remove()
    return F.cross_entropy(logits[:, :-1].reshape(-1, V).double(), x[:, 1:].reshape(-1), reduction="none")


def test_the_causal_test_per_token_on_a_model_whose_answer_is_known():
    net, x = RunModel(), runs(24)
    atlas = build(net, {"input_ids": x}, pair_units=0, causal_draws=6, batch_size=8)
    cards = {c.unit: c for c in atlas.cards}
    target = x[:, 1:].reshape(-1)
    base = _seq_positions_loss(net, x)
    for t in range(V):
        named = [j for j in range(V * PER) if j // PER == t]
        for j in named:  # every neuron fires on its token only: selectivity 1, preferred token t
            c = cards[f"act:{j}"]
            assert c.token_selectivity == pytest.approx(1.0) and c.preferred_token == t
            assert c.causal_token == t and c.causal_size == PER
            assert c.promotes[0] == t and c.promotes_by[0] == pytest.approx(1.0, abs=1e-6)  # the down row
        lost = _seq_positions_loss(net, x, named)
        want = (lost - base)[target == t].mean().item()  # the positions predicting t
        c = cards[f"act:{named[0]}"]
        assert c.causal_named == pytest.approx(want, rel=1e-4)
        assert want > 0.05
        assert c.causal_random <= 1e-9  # other tokens' neurons can only help predicting t
        assert c.causal_lo > 0  # named hurts predicting t more than random units of the layer, 95%
        assert c.causal_lo <= c.causal_named - c.causal_random <= c.causal_hi


def test_a_token_that_is_never_a_target_gets_no_causal_test_and_the_atlas_finishes():
    """Token 3 opens every sequence and appears nowhere else: its neurons prefer it, but no position
    predicts it, so their group has nothing to score (it was a DataError: no sequences); the other
    tokens' groups are still tested."""
    net, body = RunModel(), runs(24, seq=16, run=4) % 3  # tokens 0-2 in runs
    x = torch.cat([torch.full((24, 1), 3), body[:, 1:]], dim=1)
    atlas = build(net, {"input_ids": x}, pair_units=0, causal_draws=4, batch_size=8)
    cards = {c.unit: c for c in atlas.cards}
    for j in range(3 * PER, 4 * PER):
        c = cards[f"act:{j}"]
        assert c.preferred_token == 3 and c.token_selectivity == pytest.approx(1.0)
        assert c.causal_token == -1 and math.isnan(c.causal_named)
    assert cards["act:0"].causal_token == 0 and cards["act:0"].causal_named > 0


def test_pushes_of_neurons_and_heads_are_weight_products():
    pytest.importorskip("transformers")
    from tests.text_support import pattern, tiny_gpt

    net, x = tiny_gpt(), pattern(16, seed=5)
    atlas = build(net, {"input_ids": x}, pair_units=0, top=3, batch_size=8)
    cards = {c.unit: c for c in atlas.cards}
    w_u = net.lm_head.weight.detach().double()  # (vocab, d)
    gamma = net.transformer.ln_f.weight.detach().double()

    def through(d):  # the final norm as a linear map (centre, gain), then the unembedding
        return w_u @ ((d - d.mean()) * gamma)

    got = {}
    hooks = [net.transformer.h[b].attn.c_proj.register_forward_pre_hook(
        lambda m, a, b=b: got.__setitem__(b, a[0].detach())) for b in range(2)]  # fmt: skip
    with torch.no_grad():
        net(input_ids=x)
    for h in hooks:
        h.remove()
    for b in range(2):
        proj = net.transformer.h[b].mlp.c_proj.weight.detach().double()  # Conv1D: (neurons, d)
        for j in (0, 7, 63):
            logits = through(proj[j])
            c = cards[f"transformer.h.{b}.mlp.act:{j}"]
            order = torch.argsort(-logits, stable=True)[:5]
            assert list(c.promotes) == order.tolist()
            assert c.promotes_by == pytest.approx(logits[order].tolist(), rel=1e-4, abs=1e-5)
            low = torch.argsort(logits, stable=True)[:5]
            assert list(c.suppresses) == low.tolist()
            assert c.push_path.startswith("direct path")
        o = net.transformer.h[b].attn.c_proj.weight.detach().double()  # (heads * 8, d)
        z = got[b].double().reshape(-1, 32).mean(0)  # the mean attention output
        for head in range(4):
            d = z[head * 8 : (head + 1) * 8] @ o[head * 8 : (head + 1) * 8]
            logits = through(d)
            c = cards[f"transformer.h.{b}.attn:{head}"]
            assert list(c.promotes) == torch.argsort(-logits, stable=True)[:5].tolist()
            assert c.promotes_by[0] == pytest.approx(logits.max().item(), rel=1e-4, abs=1e-5)
            assert "mean output" in c.push_path


def test_the_default_token_explanation_names_the_top_tokens_and_the_rest():
    from lesion.roles.explain import Evidence, class_means_explainer, class_means_simulator, explain

    labels = np.arange(40) % 20  # 20 tokens, each twice
    act = labels.astype(float) / 10.0
    ev = Evidence("u", np.arange(40), labels, act, (), "token")
    text = class_means_explainer(ev)
    assert text.startswith("activity by token: 19=1.9; 18=1.8")
    assert text.endswith(f"else={act[labels < 10].mean():.6g}") and text.count("=") == 11
    pred = class_means_simulator(text, Evidence("u", np.arange(40), labels, None, (), "token"))
    assert pred[labels == 19][0] == pytest.approx(1.9) and pred[labels == 3][0] == pytest.approx(0.45)
    said, score, why = explain(ev, ev, act, class_means_explainer, class_means_simulator)
    assert said == text and not why and math.isfinite(score)


def test_the_layer_at_once_texts_equal_the_default_explainer():
    pytest.importorskip("transformers")
    from lesion.roles.explain import class_means_explainer, class_means_simulator
    from tests.text_support import pattern, tiny_gpt

    net, x = tiny_gpt(), pattern(16, seed=9)
    fast = build(net, {"input_ids": x}, pair_units=0, top=3, batch_size=8)
    slow = build(net, {"input_ids": x}, pair_units=0, top=3, batch_size=8, explainer=class_means_explainer,
                 simulator=class_means_simulator)  # fmt: skip
    for a, b in zip(fast.cards, slow.cards, strict=True):
        assert a.explanation == b.explanation
        assert a.simulation == pytest.approx(b.simulation, abs=1e-9, nan_ok=True)
