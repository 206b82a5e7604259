"""Transformers: MLP neurons and attention heads of HF GPT-2, Llama (grouped-query attention), BERT and
ViT classifiers and a plain-torch GPT, swept on the fast path and checked against an independent
implementation written here (hooks that edit the site by hand, one full forward pass per lesion)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lesion
from lesion import Lesion

tf = pytest.importorskip("transformers")

N, T, V = 12, 9, 40  # examples, positions, vocabulary


class Attention(nn.Module):
    """Causal multi-head attention written the plain way (heads visible through n_head, head_dim)."""

    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head, self.head_dim = n_head, d // n_head
        self.qkv = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, -1)
        q, k, v = (z.reshape(b, t, self.n_head, self.head_dim).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(d), Attention(d, n_head), nn.LayerNorm(d)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(d, 4 * d))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    def __init__(self, d: int = 32, n_head: int = 4, layers: int = 2):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, d), nn.Embedding(T, d)
        self.h = nn.ModuleList(Block(d, n_head) for _ in range(layers))
        self.ln_f, self.lm_head = nn.LayerNorm(d), nn.Linear(d, V, bias=False)

    def forward(self, input_ids):
        x = self.wte(input_ids) + self.wpe(torch.arange(input_ids.shape[1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def _gpt2():
    g = dict(vocab_size=V, bos_token_id=0, eos_token_id=0)
    return tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=T, **g))


def _llama():  # grouped-query attention: 4 query heads share 2 key/value heads
    g = dict(vocab_size=V, bos_token_id=0, eos_token_id=0, pad_token_id=0, max_position_embeddings=T)
    config = tf.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        **g,
    )
    return tf.LlamaForCausalLM(config)


def _bert():
    config = tf.BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_labels=3,
        vocab_size=V,
        max_position_embeddings=T,
        pad_token_id=0,
    )
    return tf.BertForSequenceClassification(config)


def _vit():
    config = tf.ViTConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        image_size=8,
        patch_size=4,
        num_channels=1,
        num_labels=3,
    )
    return tf.ViTForImageClassification(config)


def _models():  # name: (constructor, MLP activation, head site, output projection, data kind)
    bert = "bert.encoder.layer.{}"
    return {
        "gpt2": (_gpt2, "transformer.h.{}.mlp.act", "transformer.h.{}.attn",
                 "transformer.h.{}.attn.c_proj", "lm"),
        "llama-gqa": (_llama, "model.layers.{}.mlp.act_fn", "model.layers.{}.self_attn",
                      "model.layers.{}.self_attn.o_proj", "lm"),
        "bert": (_bert, bert + ".intermediate.intermediate_act_fn", bert + ".attention",
                 bert + ".attention.output.dense", "cls"),
        "vit": (_vit, "vit.layers.{}.mlp.activation_fn", "vit.layers.{}.attention",
                "vit.layers.{}.attention.o_proj", "img"),
        "plain": (TinyGPT, "h.{}.mlp.act", "h.{}.attn", "h.{}.attn.c_proj", "lm"),
    }  # fmt: skip


MODELS = _models()


def _data(kind: str):
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (N,), generator=g)
    if kind == "img":
        x = torch.randn(N, 1, 8, 8, generator=g)
        return [(x[:7], y[:7]), (x[7:], y[7:])]
    ids = torch.randint(1, V, (N, T), generator=g)
    if kind == "cls":
        return [({"input_ids": ids[:7]}, y[:7]), ({"input_ids": ids[7:]}, y[7:])]
    return [{"input_ids": ids[:7]}, {"input_ids": ids[7:]}]


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    make, act, attn, proj, kind = MODELS[request.param]
    torch.manual_seed(0)
    model = make().eval()
    return request.param, model, _data(kind), act, attn, proj, kind


# ----------------------------------------------------------------------------- the independent reference
def _run(model, item):
    x = item[0] if isinstance(item, tuple) else item
    out = model(**x) if isinstance(x, dict) else model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def _loss(model, data, kind) -> float:
    """Mean next-token cross-entropy over every position, or mean cross-entropy over examples."""
    total, count = 0.0, 0
    for item in data:
        with torch.no_grad():
            logits = _run(model, item)
        if kind == "lm":
            ids = item["input_ids"]
            ce = F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1), reduction="sum")
            total, count = total + float(ce), count + ids[:, 1:].numel()
        else:
            total += float(F.cross_entropy(logits, item[1], reduction="sum"))
            count += len(item[1])
    return total / count


def _channels(model, data, module: str, head: bool) -> torch.Tensor:
    """Every example's activity at a site (the module's output, or the projection's input for heads)."""
    m, got = dict(model.named_modules())[module], []
    h = (m.register_forward_pre_hook(lambda _m, a: got.append(a[0].detach())) if head
         else m.register_forward_hook(lambda _m, _a, o: got.append(o.detach())))  # fmt: skip
    with torch.no_grad():
        for item in data:
            _run(model, item)
    h.remove()
    return torch.cat(got)


def _by_hand(model, data, kind, module, head, channels, value, positions=None) -> float:
    """The loss with ``channels`` of ``module`` replaced by ``value(acts, ids)`` (one pass per batch)."""
    m, state = dict(model.named_modules())[module], {"start": 0}

    def edit(a):
        a = a.clone()
        ids = torch.arange(state["start"], state["start"] + a.shape[0])
        new = value(a, ids)[..., channels]
        pos = slice(None) if positions is None else positions
        a[:, pos, ..., channels] = new[:, pos] if new.ndim == a.ndim else new
        return a

    h = (m.register_forward_pre_hook(lambda _m, a: (edit(a[0]),)) if head
         else m.register_forward_hook(lambda _m, _a, o: edit(o)))  # fmt: skip
    try:
        total, count = 0.0, 0
        with torch.no_grad():
            for item in data:
                size = len(item["input_ids"]) if isinstance(item, dict) else len(item[1])
                n = size * (T - 1) if kind == "lm" else size
                total += _loss(model, [item], kind) * n
                count += n
                state["start"] += size
    finally:
        h.remove()
    return total / count


def _values(how: str, acts: torch.Tensor, seed: int = 5):
    if how == "zero":
        return lambda a, ids: torch.zeros_like(a)
    if how == "mean":
        return lambda a, ids: acts.reshape(-1, acts.shape[-1]).double().mean(0).float().expand_as(a)
    if how == "positional":
        return lambda a, ids: acts.double().mean(0).float()[None].expand_as(a)
    perm = torch.randperm(len(acts), generator=torch.Generator().manual_seed(seed))
    return lambda a, ids: acts[perm[ids]]


R = lesion.replacements
REPLACEMENTS = {
    "zero": R.Zero(), "mean": R.Mean(), "positional": R.PositionalMean(), "resample": R.Resample(seed=5),
}  # fmt: skip


@pytest.mark.parametrize("how", list(REPLACEMENTS))
def test_sweeps_of_neurons_and_heads_equal_a_hand_written_reference(case, how):
    name, model, data, act, attn, proj, kind = case
    metric = lesion.metrics.NextTokenLoss() if kind == "lm" else lesion.metrics.Classification()
    last = 1
    hd = 8
    lesions = {  # (lesion, module, head view, channels, positions)
        f"{act.format(0)}:3": (act.format(0), False, [3], None),
        f"{act.format(0)}:7": (act.format(0), False, [7], None),
        f"{act.format(last)}:0": (act.format(last), False, [0], None),
        f"{act.format(last)}:2-5": (act.format(last), False, [2, 3, 4, 5], None),
        f"{attn.format(0)}:head1": (proj.format(0), True, list(range(hd, 2 * hd)), None),
        f"{attn.format(last)}:3": (proj.format(last), True, list(range(3 * hd, 4 * hd)), None),
        f"{attn.format(0)}:0,2": (proj.format(0), True, [*range(hd), *range(2 * hd, 3 * hd)], None),
        # more than CHECKS (2) lesions at every site, so that the engine is planned for each of them
        f"{act.format(0)}:5": (act.format(0), False, [5], None),
        f"{act.format(last)}:1": (act.format(last), False, [1], None),
        f"{attn.format(0)}:3": (proj.format(0), True, list(range(3 * hd, 4 * hd)), None),
        f"{attn.format(last)}:0": (proj.format(last), True, list(range(hd)), None),
        f"{attn.format(last)}:2": (proj.format(last), True, list(range(2 * hd, 3 * hd)), None),
    }
    if kind == "lm":
        lesions[f"{act.format(0)}:4@-2"] = (act.format(0), False, [4], -2)  # @-1 predicts nothing scored
        lesions[f"{attn.format(last)}:1@0"] = (proj.format(last), True, list(range(hd, 2 * hd)), 0)
    r = REPLACEMENTS[how]
    df = lesion.sweep(model, data, [Lesion(u, r) for u in lesions], metric, batch_size=7)
    assert not [k for k in df.attrs["engine_fallbacks"] if k.startswith("prefix:")], df.attrs
    served = df.attrs["served"]  # the last block's neurons in closed form (lesion.engine.lastblock)
    assert served["prefix"] + served.get("closed", 0) == len(lesions)  # every lesion on a fast path (checked)
    for (u, (module, head, chans, pos)), got in zip(lesions.items(), df.loss, strict=True):
        acts = _channels(model, data, module, head)
        want = _by_hand(model, data, kind, module, head, chans, _values(how, acts), pos)
        assert got == pytest.approx(want, abs=1e-5), (name, how, u)
    intact = _loss(model, data, kind)
    assert df.attrs["intact"]["loss"] == pytest.approx(intact, abs=1e-6)
    assert (df.delta_loss.abs() > 1e-7).any()  # the lesions change something


@pytest.mark.parametrize("how", list(REPLACEMENTS))
def test_cumulative_curves_equal_the_reference(case, how):
    name, model, data, act, attn, proj, kind = case
    metric = lesion.metrics.NextTokenLoss() if kind == "lm" else lesion.metrics.Classification()
    order = [f"{act.format(1)}:{j}" for j in (5, 1, 9, 0, 3, 7)]
    heads = [f"{attn.format(0)}:{h}" for h in (2, 0, 3)]
    curves = lesion.ablation_curves(model, data, orders={"n": order, "h": heads}, metric=metric,
                                    batch_size=7, replacement=REPLACEMENTS[how])  # fmt: skip
    assert not [k for k in curves.attrs["engine_fallbacks"] if k.startswith("prefix:")]
    assert curves.attrs["served"]["prefix"] == len(order) + len(heads)  # every count but 0 on the engine
    neuron_acts = _channels(model, data, act.format(1), False)
    head_acts = _channels(model, data, proj.format(0), True)
    for _, row in curves.iterrows():
        k = int(row.n_ablated)
        if row.order == "n":
            chans = [int(u.split(":")[1]) for u in order[:k]]
            want = _by_hand(model, data, kind, act.format(1), False, chans, _values(how, neuron_acts))
        else:
            chans = [
                c for u in heads[:k] for c in range(int(u.split(":")[1]) * 8, int(u.split(":")[1]) * 8 + 8)
            ]
            want = _by_hand(model, data, kind, proj.format(0), True, chans, _values(how, head_acts))
        assert row.loss == pytest.approx(want, abs=1e-5), (name, row.order, k)


# ----------------------------------------------------------------------------- a peer: TransformerLens
def _bridge():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytest.importorskip("transformer_lens")
        from transformer_lens.model_bridge import TransformerBridge
        from transformer_lens.model_bridge.sources import native  # noqa: F401 -- registers boot_native

        config = {"n_layers": 2, "d_model": 32, "n_ctx": T, "d_head": 8, "n_heads": 4, "d_vocab": V,
                  "act_fn": "gelu", "d_mlp": 64, "normalization_type": "LN", "seed": 0}  # fmt: skip
        return TransformerBridge.boot_native(config).eval()


def test_neuron_and_head_ablation_equal_transformer_lens_run_with_hooks():
    """TransformerLens 4 (HookedTransformer's successor, TransformerBridge, built from a config) ablates
    with its own hooks; lesion addresses the same units by TransformerLens's hook names."""
    bridge = _bridge()
    ids = torch.randint(0, V, (6, T), generator=torch.Generator().manual_seed(3))

    def tl_loss(name, edit):
        def hook(t, hook):
            t = t.clone()
            edit(t)
            return t

        with torch.no_grad():
            logits = bridge.run_with_hooks(ids, fwd_hooks=[(name, hook)])
        return float(F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1)))

    def at(i):
        def edit(t):
            t[..., i] = 0

        return edit

    def head(h):
        def edit(t):
            t[:, :, h] = 0  # hook_z: (batch, position, head, d_head)

        return edit

    # three units at each site: more than the engine's CHECKS (2), so the engine serves every site
    neurons = {"blocks.0.mlp.hook_post": (5, 1, 9), "blocks.1.mlp.hook_post": (7, 0, 3)}
    heads = {"blocks.0.attn": (2, 0, 3), "blocks.1.attn": (0, 1, 2)}
    units = [f"{n}:{i}" for n, idx in neurons.items() for i in idx]
    units += [f"{n}:{i}" if k else f"{n}:head{i}" for n, idx in heads.items() for k, i in enumerate(idx)]
    df = lesion.sweep(bridge, [ids], units, lesion.metrics.NextTokenLoss())
    want = [tl_loss(n, at(i)) for n, idx in neurons.items() for i in idx]
    want += [tl_loss(f"{n}.hook_z", head(i)) for n, idx in heads.items() for i in idx]
    assert df.loss.tolist() == pytest.approx(want, abs=1e-5)
    assert df.attrs["served"]["prefix"] == len(units)
    sites = lesion.find_sites(bridge, ids)  # by default: every MLP's hook_post and every head view
    assert [s.name for s in sites] == ["blocks.0.attn", "blocks.0.mlp.hook_post", "blocks.1.attn",
                                       "blocks.1.mlp.hook_post"]  # fmt: skip


# ----------------------------------------------------------------------------- computed on paper
def test_one_layer_attention_only_toy_head_effects_computed_on_paper():
    """Tokens a=0, b=1, c=2 embed one-hot in a 4-d residual stream; no norms, no MLP. Queries and keys
    are zero, so each head attends uniformly to the positions so far. Head 0 reads 'is a' into its
    first channel, head 1 reads 'is b'; the output projection writes 2 x head 0 and -1 x head 1 into
    the 'c' direction; the unembedding reads the first three directions. At the last position of
    'a a b', head 0 contributes 2 x 2/3 and head 1 -1 x 1/3 to logit c; of 'b b b', 0 and -1. Logit a is
    0 at both. So the logit difference c - a is 1 and -1 (mean 0); without head 0: -1/3 and -1
    (mean -2/3); without head 1: 4/3 and 0 (mean 2/3)."""
    model = TinyGPT(d=4, n_head=2, layers=1)
    model.h[0].mlp = nn.Identity()  # attention only: the block adds ln_2 -> identity, undo it below
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.wte.weight[:3, :3] = torch.eye(3)
        model.h[0].ln_1 = nn.Identity()
        model.ln_f = nn.Identity()
        qkv = model.h[0].attn.qkv.weight  # rows: q (0-3), k (4-7), v (8-11); head h owns v rows 8+2h, 9+2h
        qkv[8, 0] = 1.0  # head 0, channel 0 <- 'is a'
        qkv[10, 1] = 1.0  # head 1, channel 0 (input channel 2) <- 'is b'
        model.h[0].attn.c_proj.weight[2, 0] = 2.0
        model.h[0].attn.c_proj.weight[2, 2] = -1.0
        model.lm_head.weight[:3, :3] = torch.eye(3)
    model.h[0].forward = lambda x, b=model.h[0]: x + b.attn(x)  # attention-only block
    ids = torch.tensor([[0, 0, 1], [1, 1, 1]])
    wpe = model.wpe
    model.wpe = nn.Embedding(T, 4).requires_grad_(False)
    model.wpe.weight.zero_()
    del wpe
    df = lesion.sweep(
        model, [ids], ["h.0.attn:0", "h.0.attn:1", "h.0.attn:0-1"], lesion.metrics.LogitDiff(2, 0)
    )
    assert df.attrs["intact"]["logit_diff"] == pytest.approx(0.0, abs=1e-6)
    assert df.delta_logit_diff.tolist() == pytest.approx([-2 / 3, 2 / 3, 0.0], abs=1e-6)


# ----------------------------------------------------------------------------- bad input
def test_heads_and_positions_out_of_range_are_clear_errors():
    model = _gpt2().eval()
    ids = torch.randint(0, V, (2, T))
    with pytest.raises(lesion.errors.UnitError, match=r"transformer.h.0.attn.*0\.\.3 \(4 units\)"):
        lesion.sweep(model, [ids], ["transformer.h.0.attn:head4"], lesion.metrics.NextTokenLoss())
    with pytest.raises(lesion.errors.UnitError, match="position 9 is beyond the sequence of 9 positions"):
        lesion.sweep(model, [ids], ["transformer.h.0.mlp.act:3@9"], lesion.metrics.NextTokenLoss())
    with (
        pytest.raises(lesion.errors.UnitError, match="position -10 is beyond"),
        lesion.ablate(model, "transformer.h.1.attn:2@-10"),
    ):
        model(ids)
    with pytest.raises(lesion.errors.UnitError, match="cannot parse"):
        lesion.Lesion("transformer.h.0.attn:headx")


def test_rank1_shortcut_serves_single_gpt2_neurons_and_not_llama_gated_ones():
    from lesion.core.batch import as_batch
    from lesion.engine.prefix import PrefixEngine

    for make, site, want in ((_gpt2, "transformer.h.1.mlp.act", "transformer.h.1.mlp.c_proj"),
                             (TinyGPT, "h.1.mlp.act", "h.1.mlp.c_proj"),
                             (_llama, "model.layers.1.mlp.act_fn", None)):  # fmt: skip
        model = make().eval()
        b = as_batch(torch.randint(1, V, (3, T)))
        sites = lesion.find_sites(model, b)
        eng = PrefixEngine(model, lambda b=b: iter([b]), sites)
        eng._plan(b, sites)
        assert eng.rank1(eng.sites[site]) == want  # Llama: act(gate) * up feeds down_proj, not act alone


def test_patch_and_optimal_on_heads():
    """Patch: head 2 takes its activity on the paired corrupted input (two passes by hand); Optimal: a
    head's fitted constant (a head_dim vector) is never worse than zero or the mean on its data."""
    model = _llama().eval()
    g = torch.Generator().manual_seed(4)
    clean, corrupt = torch.randint(1, V, (6, T), generator=g), torch.randint(1, V, (6, T), generator=g)
    site, proj = "model.layers.1.self_attn", "model.layers.1.self_attn.o_proj"
    df = lesion.sweep(
        model,
        [clean],
        [Lesion(f"{site}:2", lesion.replacements.Patch([corrupt]))],
        lesion.metrics.NextTokenLoss(),
    )
    src = _channels(model, [{"input_ids": corrupt}], proj, True)
    want = _by_hand(model, [{"input_ids": clean}], "lm", proj, True, list(range(16, 24)),
                    lambda a, ids: src[ids])  # fmt: skip
    assert df.loss[0] == pytest.approx(want, abs=1e-5)
    reps = [lesion.replacements.Zero(), lesion.replacements.Mean(), lesion.replacements.Optimal(steps=30)]
    got = lesion.sweep(model, [clean], [Lesion(f"{site}:{h}", r) for r in reps for h in range(4)],
                       lesion.metrics.NextTokenLoss()).loss.to_numpy().reshape(3, 4)  # fmt: skip
    assert (got[2] <= got[:2].min(0) + 1e-4).all()


def test_sites_share_passes_within_the_cache_budget_and_equal_each_site_alone(monkeypatch):
    """Sites whose recorded outputs fit CACHE_BYTES share one intact capture per batch; the values equal
    those of each site run alone (budget 0), and a site the engine cannot run falls back alone."""
    import lesion.engine.dispatch as fast

    monkeypatch.setattr(fast, "CLOSED_FORM", False)  # the last block on the prefix engine

    model, data = _gpt2().eval(), _data("lm")
    units = [f"transformer.h.{b}.mlp.act:{j}" for b in (0, 1) for j in (1, 6, 9)]
    units += [f"transformer.h.{b}.attn:{h}" for b in (0, 1) for h in (0, 3, 1)]  # > CHECKS a site
    shared = lesion.sweep(model, data, units, lesion.metrics.NextTokenLoss(), batch_size=7)
    eng_sites = lesion.find_sites(model, data[0])
    from lesion.core.batch import batches
    from lesion.engine.prefix import PrefixEngine

    eng = PrefixEngine(model, lambda: batches(data[:1], batch_size=7), eng_sites)
    ordered = sorted({u.rsplit(":", 1)[0] for u in units}, key=[s.name for s in eng_sites].index)
    chosen = [s for s in eng_sites if s.name in ordered]
    assert eng.share(chosen, 1 << 30) == [ordered]  # one run: a single capture per batch serves all four
    assert eng.share(chosen, 0) == [[n] for n in ordered]
    import lesion.engine.prefixserve as prefixserve

    monkeypatch.setattr(prefixserve, "CACHE_BYTES", 0)
    alone = lesion.sweep(model, data, units, lesion.metrics.NextTokenLoss(), batch_size=7)
    fast = lambda df: df.attrs["served"]["prefix"] + df.attrs["served"].get("closed", 0)  # noqa: E731
    assert fast(shared) == fast(alone) == len(units)  # the last block's neurons in closed form
    assert (shared.loss - alone.loss).abs().max() < 1e-6


def test_a_site_the_engine_cannot_run_falls_back_alone(monkeypatch):
    """The engine refuses one site (as it would a module that does not run once per pass): the sweep
    keeps the other sites on the engine, that one on the slow path with the reason, values unchanged."""
    import lesion.engine.dispatch as dispatch

    monkeypatch.setattr(dispatch, "CLOSED_FORM", False)  # the last block on the prefix engine
    from lesion.engine import Unsupported
    from lesion.engine.prefix import PrefixEngine

    model, data = _gpt2().eval(), _data("lm")
    units = [f"transformer.h.0.mlp.act:{j}" for j in (1, 6, 9)] + [
        f"transformer.h.1.attn:{h}" for h in (0, 3, 1)
    ]
    units += [f"transformer.h.1.mlp.act:{j}" for j in (2, 4, 7)]
    ref = lesion.sweep(model, data, units, lesion.metrics.NextTokenLoss(), batch_size=7, engine=False)
    stubs = PrefixEngine.stubs

    def refuse(self, site):
        if site.name == "transformer.h.1.attn":
            raise Unsupported(f"site {site.name!r}: refused by the test")
        return stubs(self, site)

    monkeypatch.setattr(PrefixEngine, "stubs", refuse)
    df = lesion.sweep(model, data, units, lesion.metrics.NextTokenLoss(), batch_size=7)
    assert "refused by the test" in df.attrs["engine_fallbacks"]["prefix:transformer.h.1.attn"]
    # both MLP sites still on the engine (checked): the last block's neurons in closed form
    assert df.attrs["served"]["prefix"] + df.attrs["served"].get("closed", 0) == 6
    assert (df.loss - ref.loss).abs().max() < 1e-5


def test_the_progress_bar_moves_with_every_batch_of_a_prefix_sweep(monkeypatch):
    """The module-prefix engine streams every batch per pass: the bar advances by each batch's share of
    the examples (not all at once on the first batch) and ends at the number of lesions."""
    import lesion.engine.dispatch as dispatch

    monkeypatch.setattr(dispatch, "CLOSED_FORM", False)  # the last block on the prefix engine
    import contextlib

    import lesion.analyses.sweep as sw

    updates = []

    class Spy:
        def update(self, k):
            updates.append(k)

    monkeypatch.setattr(sw, "progress_bar", lambda *a, **k: contextlib.nullcontext(Spy()))
    model, data = _gpt2().eval(), _data("lm")
    n = sum(len(b["input_ids"]) for b in data)
    units = [f"transformer.h.0.mlp.act:{j}" for j in range(8)]
    df = lesion.sweep(model, data, units, lesion.metrics.NextTokenLoss(), batch_size=7)
    assert df.attrs["served"]["prefix"] == 8
    assert updates[0] == int(8 * 7 / n) < 8  # after the first batch of 7 examples
    assert sum(updates) == 8 and all(u > 0 for u in updates)


class _PairedEmbed(nn.Module):
    """Returns (embeddings, a constant of leading size 2): planned on two examples, the constant must not
    be taken for a batched output (its leading axis equals the planning batch, but not the probe's)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 16)
        self.register_buffer("pair", torch.randn(2, 16, generator=torch.Generator().manual_seed(1)))

    def forward(self, ids):
        return self.emb(ids), self.pair


class _PairedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = _PairedEmbed()
        self.up, self.act, self.down = nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)
        self.head = nn.Linear(16, V)

    def forward(self, input_ids):
        h, pair = self.embed(input_ids)
        h = h + pair.sum(0)  # repeated by mistake, the sum would grow with the lesions per pass
        return self.head(h + self.down(self.act(self.up(h))))


@pytest.mark.parametrize("pass_bytes", [1, 1 << 30])
def test_prefix_plan_on_two_examples_keeps_constant_outputs_shared(monkeypatch, pass_bytes):
    """The prefix engine plans on two examples (not a full pass); a stub's constant output of leading size
    2 stays shared, and the sweep equals the slow path whatever the lesions per pass (1 or all)."""
    import lesion.engine.prefix as prefix

    monkeypatch.setattr(prefix, "MAX_PASS_BYTES", pass_bytes)
    model = _PairedLM().eval()
    ids = torch.randint(0, V, (5, T), generator=torch.Generator().manual_seed(2))
    units = [f"act:{j}" for j in range(0, 32, 5)]
    fast = lesion.sweep(model, [ids], units, lesion.metrics.NextTokenLoss(), batch_size=5)
    slow = lesion.sweep(model, [ids], units, lesion.metrics.NextTokenLoss(), batch_size=5, engine=False)
    assert fast.attrs["served"]["prefix"] == len(units)
    assert (fast.loss - slow.loss).abs().max() < 1e-6
