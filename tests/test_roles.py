"""The cards of lesion.roles: planted roles on a hand-weighted model, every number against an independent
computation written here (hand argsort, hook loops, double hooks, weight products), the scores, and bad
input."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lesion
from lesion.errors import LesionError
from lesion.roles import build
from lesion.roles.rules import RULES, THRESHOLDS, role
from tests.toys import Planted, ToyMLP, planted_data, toy_data


def ce(z: list[float], label: int) -> float:
    """Cross-entropy of logits ``z`` for ``label``, written out."""
    return math.log(sum(math.exp(v) for v in z)) - z[label]


@pytest.fixture(scope="module")
def planted():
    x, y = planted_data(10)
    xt, trained, true = planted_data(10, mislabeled=5)
    atlas = build(Planted(), (x, y), train=(xt, trained), true_labels=true, pair_units=11, partners=3)
    return {c.unit: c for c in atlas.cards}, atlas


def test_planted_roles_are_the_ones_derived_by_hand(planted):
    cards, _ = planted
    rule = {u: c.role_rule for u, c in cards.items()}
    assert rule == {
        "act1:0": "class detector",
        "act1:1": "selective, not needed",
        "act1:2": "selective, not needed",
        "act1:3": "dead",
        "act1:4": "memorisation",
        "act1:5": "class detector",
        "act2:0": "class detector",
        "act2:1": "class detector",
        "act2:2": "harmful",
        "act2:3": "class detector",
        "act2:4": "memorisation",
    }
    assert cards["act1:0"].role == (
        "class-0 detector: fires on 0 (selectivity 1.00); necessary for 0 (-100% on 0, -33% overall)"
    )
    assert cards["act1:1"].role == (
        "fires on 1 (selectivity 1.00); no measurable role (effect inside its interval around 0); "
        "backed up by act1:2"
    )
    assert cards["act1:3"].role == "dead"
    assert cards["act1:4"].memorisation and cards["act2:4"].memorisation
    assert [u for u, c in cards.items() if c.memorisation] == ["act1:4", "act2:4"]


def test_planted_duplicates_cost_nothing_alone_and_a_known_amount_together(planted):
    cards, _ = planted
    for u in ("act1:1", "act1:2"):
        c = cards[u]
        assert (c.loss_zero, c.loss_zero_lo, c.loss_zero_hi, c.accuracy_zero) == (0, 0, 0, 0)
    both = (ce([0, 0.5, 0], 1) - ce([0, 4.5, 0], 1)) / 3  # only class 1 (a third of the data) changes
    c = cards["act1:1"]
    k = c.partners.index("act1:2")
    assert c.partner_pair[k] == pytest.approx(both, rel=1e-5)
    assert c.partner_interaction[k] == pytest.approx(both, rel=1e-5)
    assert c.partner_interaction[k] >= THRESHOLDS["pair"]
    # h0 and h5 touch different examples: additive, no interaction
    assert cards["act1:0"].partner_interaction[cards["act1:0"].partners.index("act1:5")] == pytest.approx(
        0, abs=1e-6
    )


def test_planted_detector_and_memorisation_numbers(planted):
    cards, _ = planted
    c = cards["act1:0"]
    d0 = ce([0, 0.5, 0], 0) - ce([4, 0.5, 0], 0)
    assert c.class_loss_zero[0] == pytest.approx(d0, rel=1e-5)
    assert c.class_loss_zero_lo[0] == pytest.approx(d0, rel=1e-5)  # every class-0 example alike: no spread
    assert c.class_accuracy_zero == pytest.approx((-1.0, 0.0, 0.0))
    assert c.loss_zero == pytest.approx(d0 / 3, rel=1e-5)
    m = cards["act1:4"]
    changed = ce([0, 0.5, 4], 0) - ce([8, 0.5, 4], 0)
    assert (m.mem_changed, m.mem_kept) == (pytest.approx(changed, rel=1e-5), 0)
    assert m.role.startswith("memorisation unit: needed by the mislabeled examples")
    assert not cards["act1:5"].memorisation and cards["act1:5"].mem_changed < 0


def test_planted_pushes_are_weight_products(planted):
    cards, _ = planted
    assert cards["act2:0"].push == pytest.approx(tuple(Planted.W3[:, 0].tolist()))
    assert cards["act2:0"].push_path.startswith("direct")
    prod = Planted.W3 @ Planted.W2
    assert cards["act1:1"].push == pytest.approx(tuple(prod[:, 1].tolist()))
    assert "approximate" in cards["act1:1"].push_path


# ------------------------------------------------------------------ every number, computed another way


def _random_net():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(48, 5)
    y = torch.randint(0, 3, (48,), generator=torch.Generator().manual_seed(1))
    return net, x, y


@pytest.fixture(scope="module")
def random_cards():
    net, x, y = _random_net()
    atlas = build(net, (x, y), top=5, bins=7, pair_units=4, partners=2, causal_draws=3)
    return net, x, y, {c.unit: c for c in atlas.cards}


def _acts(net, x):
    got = {}
    hs = [
        net[i].register_forward_hook(lambda m, i_, o, i=i: got.__setitem__(str(i), o.detach()))
        for i in (1, 3)
    ]
    with torch.no_grad():
        net(x)
    for h in hs:
        h.remove()
    return {k: v.double().numpy() for k, v in got.items()}


def _losses(net, x, y, edits=()) -> np.ndarray:
    """Per-example cross-entropy with ``edits`` [(layer index, unit, value)] applied by hooks."""

    def hook(j, v):
        def fn(m, i_, o):
            o = o.clone()
            o[:, j] = v
            return o

        return fn

    hs = [net[int(layer)].register_forward_hook(hook(j, v)) for layer, j, v in edits]
    try:
        with torch.no_grad():
            out = net(x)
    finally:
        for h in hs:
            h.remove()
    return F.cross_entropy(out.double(), y, reduction="none").numpy(), out.argmax(1).numpy()


def test_top_examples_histogram_and_activity_by_hand(random_cards):
    net, x, y, cards = random_cards
    acts = _acts(net, x)
    for unit, c in cards.items():
        layer, j = unit.split(":")
        a = acts[layer][:, int(j)].astype(np.float32).astype(np.float64)
        top = np.argsort(-a, kind="stable")[:5]
        bottom = np.argsort(a, kind="stable")[:5]
        assert list(c.top_index) == top.tolist() and list(c.bottom_index) == bottom.tolist()
        assert c.top_activity == pytest.approx(a[top].tolist())
        assert list(c.top_label) == y[top].tolist()
        counts, _ = (
            np.histogram(a, np.linspace(a.min(), a.max(), 8)) if np.ptp(a) > 0 else ([48] + [0] * 6, 0)
        )
        assert list(c.hist_counts) == list(counts)
        assert c.frequency_active == pytest.approx((a > 0).mean())
        assert (c.mean, c.sd) == (pytest.approx(a.mean()), pytest.approx(a.std(), abs=1e-6))
        means = np.array([a[y.numpy() == k].mean() for k in range(3)])
        if means.max() > 0:
            rest = (means.sum() - means.max()) / 2
            assert c.selectivity == pytest.approx((means.max() - rest) / (means.max() + rest))
            assert c.preferred_class == int(means.argmax())


def _interval(d: np.ndarray):
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


def test_effects_and_intervals_by_a_hook_loop(random_cards):
    net, x, y, cards = random_cards
    base, pred0 = _losses(net, x, y)
    acts = _acts(net, x)
    for unit, c in cards.items():
        layer, j = unit.split(":")
        for name, value in (("zero", 0.0), ("mean", float(acts[layer][:, int(j)].mean()))):
            lost, pred = _losses(net, x, y, [(layer, int(j), value)])
            m, lo, hi = _interval(lost - base)
            got = (getattr(c, f"loss_{name}"), getattr(c, f"loss_{name}_lo"), getattr(c, f"loss_{name}_hi"))
            assert got == pytest.approx((m, lo, hi), rel=1e-4, abs=1e-6)
            right = (pred == y.numpy()).astype(float) - (pred0 == y.numpy()).astype(float)
            assert getattr(c, f"accuracy_{name}") == pytest.approx(right.mean())
            if name == "zero":
                for k in range(3):
                    sel = y.numpy() == k
                    mk, lok, hik = _interval((lost - base)[sel])
                    assert (
                        c.class_loss_zero[k],
                        c.class_loss_zero_lo[k],
                        c.class_loss_zero_hi[k],
                    ) == pytest.approx((mk, lok, hik), rel=1e-4, abs=1e-6)


def test_pair_effects_by_a_double_hook_and_pushes_by_weight_products(random_cards):
    net, x, y, cards = random_cards
    base, _ = _losses(net, x, y)
    tried = 0
    for unit, c in cards.items():
        layer, j = unit.split(":")
        single = cards[unit].loss_zero
        for p, pair, inter in zip(c.partners, c.partner_pair, c.partner_interaction, strict=True):
            pl, pj = p.split(":")
            both, _ = _losses(net, x, y, [(layer, int(j), 0.0), (pl, int(pj), 0.0)])
            assert pair == pytest.approx((both - base).mean(), rel=1e-4, abs=1e-7)
            assert inter == pytest.approx(pair - single - cards[p].loss_zero, rel=1e-4, abs=1e-7)
            tried += 1
        w = net[4].weight.detach() if layer == "3" else net[4].weight.detach() @ net[2].weight.detach()
        assert c.push == pytest.approx(tuple(w[:, int(j)].tolist()), rel=1e-5, abs=1e-6)
    assert tried > 0
    assert sum(c.pairs_tried for c in cards.values()) == 2 * tried // 2


def test_compensation_and_simulation_by_hand(random_cards):
    net, x, y, cards = random_cards
    acts = _acts(net, x)
    measured = [c for c in cards.values() if c.compensators]
    assert len(measured) == 4  # the pair_units units
    for c in measured:
        layer, j = c.unit.split(":")
        h = net[int(layer)].register_forward_hook(
            lambda m, i_, o, j=int(j): o.index_fill(1, torch.tensor([j]), 0.0)
        )
        try:
            lesioned = _acts(net, x)
        finally:
            h.remove()
        change = {
            f"{k}:{i}": float(lesioned[k][:, i].mean() - acts[k][:, i].mean())
            for k in lesioned
            for i in range(lesioned[k].shape[1])
            if f"{k}:{i}" != c.unit
        }
        best = sorted(change, key=lambda u: -abs(change[u]))[:5]
        assert [abs(v) for v in c.compensation] == pytest.approx([abs(change[u]) for u in best], abs=1e-6)
    for unit, c in cards.items():
        layer, j = unit.split(":")
        a = acts[layer][:, int(j)].astype(np.float32).astype(np.float64)
        perm = np.random.default_rng(0).permutation(
            48
        )  # the seeded halves: explain on one, score on the other
        fit, test = np.sort(perm[:24]), np.sort(perm[24:])
        yy = y.numpy()
        means = {k: a[fit][yy[fit] == k].mean() for k in np.unique(yy[fit])}
        pred = np.array([means[k] for k in yy[test]])
        if np.ptp(pred) > 0 and np.ptp(a[test]) > 0:
            assert c.simulation == pytest.approx(np.corrcoef(pred, a[test])[0, 1], abs=1e-5)


def test_causal_named_set_by_a_hook(random_cards):
    net, x, y, cards = random_cards
    base, _ = _losses(net, x, y)
    checked = 0
    for c in cards.values():
        if c.causal_class < 0:
            continue
        layer = c.layer
        named = [
            int(u.split(":")[1])
            for u, d in cards.items()
            if d.layer == layer
            and d.preferred_class == c.causal_class
            and d.selectivity >= THRESHOLDS["selective"]
        ]
        assert len(named) == c.causal_size
        lost, _ = _losses(net, x, y, [(layer, j, 0.0) for j in named])
        sel = y.numpy() == c.causal_class
        assert c.causal_named == pytest.approx((lost - base)[sel].mean(), rel=1e-4, abs=1e-7)
        assert c.causal_lo <= c.causal_named - c.causal_random <= c.causal_hi
        checked += 1
    assert checked > 0


# ----------------------------------------------------------------------------------------- scores


class ClassAndNoise(nn.Module):
    """Input (one-hot class (3), noise): u0 = 1, 2 or 3 by class (a function of the class); u1 = noise + 5."""

    def __init__(self):
        super().__init__()
        self.fc, self.act, self.out = nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 2, 3, 0], [0, 0, 0, 1]]))
            self.fc.bias.copy_(torch.tensor([0.0, 5]))
            self.out.weight.normal_(generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.out(self.act(self.fc(x)))


def test_simulation_score_is_one_for_a_function_of_the_class_and_near_zero_for_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (2000,), generator=g)
    x = torch.cat([F.one_hot(y, 3).float(), torch.randn(2000, 1, generator=g)], 1)
    cards = {c.unit: c for c in build(ClassAndNoise(), (x, y), pair_units=0).cards}
    assert cards["act:0"].simulation == pytest.approx(1.0, abs=1e-9)
    assert abs(cards["act:1"].simulation) < 0.1


# ------------------------------------------------------------------------------------- bad input


def test_a_model_without_sites_is_a_clear_error():
    with pytest.raises(LesionError, match=r"activation|sites|units"):
        build(nn.Sequential(nn.Linear(4, 3)), (torch.randn(6, 4), torch.zeros(6, dtype=torch.long)))


def test_data_without_labels_has_no_class_parts_and_says_so():
    net, x, _ = _random_net()
    atlas = build(net, x, pair_units=2)
    assert atlas.meta["labels"] is False
    for c in atlas.cards:
        assert math.isnan(c.selectivity) and c.class_loss_zero == () and c.class_means == ()
        assert any("no labels" in o for o in c.omissions)
        assert not math.isnan(c.loss_zero)  # against the intact model's predictions


def test_one_example_gives_cards_without_intervals():
    x, y = toy_data(1)
    atlas = build(ToyMLP(), (x[:1], y[:1]), pair_units=2)
    for c in atlas.cards:
        assert math.isnan(c.loss_zero_lo) and math.isnan(c.simulation)
        assert any("one example" in o for o in c.omissions)


def test_a_constant_unit_and_a_dead_unit():
    cards = {c.unit: c for c in build(ToyMLP(), toy_data(4), pair_units=5).cards}
    assert cards["act:1"].role_rule == "constant" and cards["act:1"].constant
    assert cards["act:1"].role.startswith("constant: 1 on every example (a bias: deleting it +")
    assert cards["act:4"].role == "dead" and cards["act:4"].dead
    assert any("simulation score: undefined" in o for o in cards["act:1"].omissions)


@pytest.mark.parametrize(
    ("explainer", "simulator", "said"),
    [
        (lambda ev: 1 / 0, None, "explainer raised ZeroDivisionError"),
        (lambda ev: 42, None, "explainer returned 42; expected text"),
        (lambda ev: "  ", None, "explainer returned '  '"),
        (None, lambda text, ev: np.zeros(3), "simulator returned 3 values"),
        (None, lambda text, ev: [float("nan")] * len(ev.ids), "non-finite"),
        (None, lambda text, ev: (_ for _ in ()).throw(RuntimeError("model offline")), "model offline"),
    ],
)
def test_an_explainer_that_fails_becomes_a_stated_omission(explainer, simulator, said):
    net, x, y = _random_net()
    atlas = build(net, (x, y), pair_units=0, explainer=explainer, simulator=simulator)
    for c in atlas.cards:
        assert math.isnan(c.simulation)
        assert any(said in o for o in c.omissions), c.omissions


def test_a_custom_explainer_is_scored_like_the_default():
    net, x, y = _random_net()
    seen = []

    def explainer(ev):
        seen.append(ev)
        return "activity by class: 0=1; 1=2; 2=3"

    atlas = build(net, (x, y), pair_units=0, explainer=explainer)
    assert seen and seen[0].activity is not None and len(seen[0].ids) == 24
    assert all(c.explanation == "activity by class: 0=1; 1=2; 2=3" for c in atlas.cards)


def test_the_table_is_one_row_per_unit_and_lesion_roles_is_public():
    x, y = toy_data(4)
    df = lesion.roles(ToyMLP(), (x, y), pair_units=2)
    assert list(df.unit) == [f"act:{j}" for j in range(5)]
    assert {"role", "loss_zero", "loss_zero_lo", "selectivity", "partners", "simulation"} <= set(df.columns)
    assert df.attrs["rules"][0]["name"] == RULES[0].name
    importlib.import_module("lesion.roles.atlas")  # may rebind lesion.roles to the package: still callable

    assert len(lesion.roles(ToyMLP(), (x, y), pair_units=0)) == 5


def test_role_rules_use_the_thresholds_table():
    card = {k: v for k, v in planted_like().items()}
    assert role(card)[1] == "class detector"
    card["class_accuracy_zero"] = (-THRESHOLDS["class_drop"] / 2, 0.0)
    assert role(card)[1] == "needed"  # the class drop is under the threshold: no detector, no class named
    card["loss_zero"] = THRESHOLDS["effect"] / 2
    words = "fires on 0 (selectivity 0.90); negligible role (+0.0005 loss [+0.1, +0.5], under 0.001)"
    assert role(card) == (words, "selective, not needed")


def planted_like() -> dict:
    return {
        "dead": False,
        "constant": False,
        "mean": 1.0,
        "mem_changed": math.nan,
        "mem_changed_lo": math.nan,
        "mem_kept": math.nan,
        "mem_kept_hi": math.nan,
        "selectivity": 0.9,
        "preferred_class": 0,
        "class_loss_zero_lo": (0.5, -0.1),
        "class_accuracy_zero": (-0.5, 0.0),
        "accuracy_zero": -0.25,
        "loss_zero": 0.3,
        "loss_zero_lo": 0.1,
        "loss_zero_hi": 0.5,
        "partners": (),
        "partner_interaction": (),
        "sign_disagree": False,
    }


def test_kept_stages_are_reused(tmp_path, monkeypatch):
    x, y = toy_data(4)
    first = build(ToyMLP(), (x, y), pair_units=3, keep=tmp_path)
    assert sorted(p.name.split("-")[0] for p in tmp_path.glob("*.npz"))
    import lesion.roles.stages_run as B

    monkeypatch.setattr(B, "single_effects", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rerun")))
    again = build(ToyMLP(), (x, y), pair_units=3, keep=tmp_path)
    assert [c.row() for c in again.cards] == [c.row() for c in first.cards] or all(
        a.role == b.role for a, b in zip(again.cards, first.cards, strict=True)
    )


def test_the_docs_print_the_rules_table_of_the_code():
    from pathlib import Path

    from lesion.roles.rules import table

    text = (Path(__file__).resolve().parents[1] / "docs" / "roles.md").read_text().replace("\\|", "|")
    for r in table():
        assert f"| {r['name']} | {r['when']} |" in text, r["name"]


# ------------------------------------------------------------------------------- a language model


def test_a_language_model_card_by_hand():
    pytest.importorskip("transformers")
    from tests.text_support import pattern, tiny_gpt

    net, x = tiny_gpt(), pattern(24, seed=7)
    atlas = build(net, {"input_ids": x}, pair_units=2, partners=1, top=4, batch_size=8)
    assert atlas.meta["task"] == "causal-lm" and atlas.meta["tokens_per_sequence"] == 12
    layer, j = "transformer.h.1.mlp.act", 5
    c = next(c for c in atlas.cards if c.unit == f"{layer}:{j}")
    module = dict(net.named_modules())[layer]
    got = {}
    h = module.register_forward_hook(lambda m, i_, o: got.__setitem__("a", o.detach()))
    with torch.no_grad():
        base = net(input_ids=x).logits
    h.remove()
    a = got["a"].reshape(-1, got["a"].shape[-1])[:, j].double().numpy()  # (sequences * 12,)
    assert list(c.top_index) == np.argsort(-a, kind="stable")[:4].tolist()
    cur = x.reshape(-1).numpy()
    means = {t: a[cur == t].mean() for t in np.unique(cur)}
    assert list(c.preferred_tokens) == sorted(means, key=lambda t: (-means[t], t))[:5]

    def seq_loss(logits):  # (sequences,) mean next-token cross-entropy
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(), x[:, 1:].reshape(-1),
                             reduction="none")  # fmt: skip
        return ce.reshape(len(x), -1).mean(1).numpy()

    h = module.register_forward_hook(lambda m, i_, o: o.index_fill(-1, torch.tensor([j]), 0.0))
    with torch.no_grad():
        lesioned = net(input_ids=x).logits
    h.remove()
    m, lo, hi = _interval(seq_loss(lesioned) - seq_loss(base))
    assert (c.loss_zero, c.loss_zero_lo, c.loss_zero_hi) == pytest.approx((m, lo, hi), rel=1e-3, abs=1e-6)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))  # Resample(seed=0)
    other = got["a"][perm][..., j]  # (sequences, 12): each sequence takes another's activity

    def resample(m, i_, o):
        o = o.clone()
        o[..., j] = other
        return o

    h = module.register_forward_hook(resample)
    with torch.no_grad():
        resampled = net(input_ids=x).logits
    h.remove()
    m, lo, hi = _interval(seq_loss(resampled) - seq_loss(base))
    assert (c.loss_resample, c.loss_resample_lo, c.loss_resample_hi) == pytest.approx(
        (m, lo, hi), rel=1e-3, abs=1e-6
    )
    assert c.kind == "neuron (every position)" and math.isfinite(c.direct_zero)
    assert c.explanation.startswith("activity by token:") and math.isfinite(c.simulation)
    assert any("language model" in o for o in c.omissions)


def test_attention_head_cards_and_their_pattern_scores():
    pytest.importorskip("transformers")
    from tests.text_support import pattern, tiny_gpt

    net, x = tiny_gpt(), pattern(16, seed=3)
    atlas = build(net, {"input_ids": x}, pair_units=0, top=3, batch_size=8)
    heads = [c for c in atlas.cards if c.kind == "attention head"]
    assert [c.unit for c in heads] == [f"transformer.h.{b}.attn:{h}" for b in range(2) for h in range(4)]
    old = net.config._attn_implementation
    net.config._attn_implementation = "eager"  # this test's reference: the model's own attention weights
    try:
        with torch.no_grad():
            att = net(input_ids=x, output_attentions=True).attentions  # per block (batch, heads, t, t)
    finally:
        net.config._attn_implementation = old
    t = x.shape[1]
    same = (x[:, :, None] == x[:, None, :]) & torch.ones(t, t, dtype=torch.bool).tril(-1)
    has = same.any(-1)
    for c in heads:
        block, h = int(c.layer.split(".")[2]), c.index
        a = att[block][:, h].double()  # (batch, t, t)
        assert c.head_previous == pytest.approx(
            a.diagonal(offset=-1, dim1=-2, dim2=-1).mean().item(), abs=1e-5
        )
        assert c.head_first == pytest.approx(a[:, 1:, 0].mean().item(), abs=1e-5)
        dup = (a * same).sum(-1)[has].mean().item()
        assert c.head_duplicate == pytest.approx(dup, abs=1e-5)
        assert math.isfinite(c.loss_zero) and c.top_index


def test_kept_stages_belong_to_one_model_and_one_data(tmp_path):
    x, y = toy_data(4)
    build(ToyMLP(), (x, y), pair_units=2, keep=tmp_path)
    other = ToyMLP()
    with torch.no_grad():
        other.out.weight.mul_(2)
    again = build(other, (x, y), pair_units=2, keep=tmp_path)  # other weights: measured anew
    direct = build(other, (x, y), pair_units=2)
    assert [c.loss_zero for c in again.cards] == [c.loss_zero for c in direct.cards]


def test_memorisation_input_errors():
    x, y = planted_data(4)
    with pytest.raises(LesionError, match="true_labels"):
        build(Planted(), (x, y), train=(x, y), pair_units=0)
    with pytest.raises(LesionError, match="nothing was memorised"):
        build(Planted(), (x, y), train=(x, y), true_labels=y, pair_units=0)
    with pytest.raises(LesionError, match="has 3 labels"):
        build(Planted(), (x, y), train=(x, y), true_labels=y[:3], pair_units=0)


def test_a_vit_head_card_by_hand():
    from lesion.analyses.sweep import sites_for
    from lesion.models import build_model

    arch = {"kind": "vit", "input_shape": [1, 8, 8], "n_classes": 4, "patch": 4, "d_model": 16, "n_layer": 1}
    net = build_model({**arch, "n_head": 2}, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 8, 8, generator=g), torch.randint(0, 4, (40,), generator=g)
    cards = {c.unit: c for c in build(net, (x, y), pair_units=2, top=4).cards}
    site = next(s for s in sites_for(net, (x, y)) if s.heads)
    proj = dict(net.named_modules())[site.target]
    got = {}
    hook = proj.register_forward_pre_hook(lambda m, args: got.__setitem__("h", args[0].detach()))
    with torch.no_grad():
        base = F.cross_entropy(net(x), y, reduction="none").double()
    hook.remove()
    h = got["h"]  # (examples, tokens, heads * head_dim)
    for head in range(site.width):
        c = cards[f"{site.name}:{head}"]
        assert c.kind == "attention head" and math.isfinite(c.head_first) and math.isnan(c.head_duplicate)
        a = h.reshape(*h.shape[:2], site.width, site.group)[:, :, head].norm(dim=-1).mean(1).double().numpy()
        assert list(c.top_index) == np.argsort(-a, kind="stable")[:4].tolist()
        means = [a[y.numpy() == k].mean() for k in range(4)]
        assert c.class_means == pytest.approx(means, rel=1e-5)

        def zero(m, args, head=head):
            v = args[0].clone()
            v.view(*v.shape[:2], site.width, site.group)[:, :, head] = 0
            return (v,)

        hook = proj.register_forward_pre_hook(zero)
        with torch.no_grad():
            lost = F.cross_entropy(net(x), y, reduction="none").double()
        hook.remove()
        m, lo, hi = _interval((lost - base).numpy())
        assert (c.loss_zero, c.loss_zero_lo, c.loss_zero_hi) == pytest.approx((m, lo, hi), rel=1e-4, abs=1e-7)
