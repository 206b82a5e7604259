"""The attribution estimate: exact where the model is linear in the unit, a derivative checked against finite
differences, and beside the exact effect on a tiny trained GPT-2 (the rank correlation is printed)."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from torch import nn

import lesion
import lesion.analyses.attribution
from lesion.analyses.attribution import estimates, fitted_replacement, spearman
from lesion.core.sites import find_sites
from lesion.errors import LesionError


def hf():
    """transformers (the optional ``hf`` extra): the tests of Hugging Face models skip without it."""
    return pytest.importorskip("transformers")


class Attention(nn.Module):
    """Causal multi-head attention with an output projection (a head view: the input of ``o_proj``)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.num_heads, self.head_dim = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.o_proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        z = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # (b, heads, t, head_dim)
        return self.o_proj(z.transpose(1, 2).reshape(b, t, d))


class Parallel(nn.Module):
    """One parallel block (attention and MLP both read the embedding) and a linear readout: the logits are
    linear in every head's slice and every MLP neuron, so the first-order estimate is exact."""

    def __init__(self, vocab=20, d=16, heads=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.attn = Attention(d, heads)
        self.mlp = nn.Sequential(nn.Linear(d, 32), nn.GELU(), nn.Linear(32, d))
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.emb(ids)
        return self.head(x + self.attn(x) + self.mlp(x))


def test_estimate_is_exact_on_a_model_linear_in_the_unit():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(50, 3)
    # the mean of the data itself would change a mean of a linear readout by exactly 0: another reference
    for value in (0.0, lesion.replacements.Mean(reference=torch.randn(30, 3) + 1.0)):
        df = lesion.attribution_table(net, x, metric=lesion.metrics.LogitDiff(0, 1), replacement=value)
        assert len(df) == 8 and df["exact"].abs().max() > 1e-2
        np.testing.assert_allclose(df["estimate"], df["exact"], atol=1e-5)


REPLACEMENTS = {  # other references than the data: the data's own means would change a linear mean by 0
    "zero": lambda ref: lesion.replacements.Zero(),
    "mean": lambda ref: lesion.replacements.Mean(reference=ref),
    "positional mean": lambda ref: lesion.replacements.PositionalMean(reference=ref),
    "resample": lambda ref: lesion.replacements.Resample(seed=3, reference=ref),
    "resample x3": lambda ref: lesion.replacements.Resample(
        seed=3, repeats=3, reference=ref
    ),  # the sweep averages draws
}


@pytest.mark.parametrize("kind", list(REPLACEMENTS))
def test_heads_and_neurons_exact_on_a_linear_readout(kind):
    torch.manual_seed(1)
    net = Parallel()
    ids = torch.randint(0, 20, (12, 7))
    sites = find_sites(net, ids[:2])
    assert [s.name for s in sites] == ["attn", "mlp.1"]  # the head view (4 heads) and the GELU (32)
    value = REPLACEMENTS[kind](torch.randint(0, 5, (12, 7)))
    df = lesion.attribution_table(
        net, ids, metric=lesion.metrics.LogitDiff(3, 5), replacement=value, batch_size=5
    )
    assert list(df["kind"].value_counts().sort_index()) == [4, 32]
    assert df.loc[df.kind == "head", "exact"].abs().min() > 1e-4
    np.testing.assert_allclose(df["estimate"], df["exact"], atol=1e-5)


def test_mse_estimate_misses_exactly_the_quadratic_term():
    """MSE of out = w . a + c: deleting unit j moves out by -a_j w_j; exact - estimate = mean((a_j w_j)^2)."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 1)).double()
    x, y = torch.randn(40, 3, dtype=torch.float64), torch.randn(40, 1, dtype=torch.float64)
    df = lesion.attribution_table(net, (x, y), metric=lesion.metrics.MSE())
    a = torch.relu(net[0](x)).detach()  # (40, 6)
    quad = ((a * net[2].weight.detach()[0]) ** 2).mean(0).numpy()
    np.testing.assert_allclose(df["exact"] - df["estimate"], quad, atol=1e-9)


def tiny_gpt2(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    transformers = hf()
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).to(dtype).eval()


def tiny_llama():
    torch.manual_seed(0)
    transformers = hf()
    cfg = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=50, max_position_embeddings=16, bos_token_id=0, eos_token_id=0,
        pad_token_id=0,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).double().eval()
    for m in model.modules():  # Llama's RMSNorm computes in float32: in float64 here, for finite differences
        if type(m).__name__ == "LlamaRMSNorm":
            m.forward = types.MethodType(_rms64, m)
    return model


def _rms64(self, x):
    return self.weight * x * torch.rsqrt((x**2).mean(-1, keepdim=True) + self.variance_epsilon)


def tiny_bert():
    torch.manual_seed(0)
    transformers = hf()
    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, vocab_size=50,
        max_position_embeddings=16, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(cfg).double().eval()


def lm_loss(logits, inputs, _y):
    ids, mask = inputs["input_ids"], inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
    valid = mask[:, 1:].bool() & mask[:, :-1].bool()
    return nn.functional.cross_entropy(logits[:, :-1][valid], ids[:, 1:][valid])


def cls_loss(logits, _inputs, y):
    return nn.functional.cross_entropy(logits, y)


CASES = {  # model, metric, the loss written out here, with or without labels
    "gpt2 (padded)": (lambda: tiny_gpt2(dtype=torch.float64), lesion.metrics.NextTokenLoss, lm_loss, False),
    "llama (GQA)": (tiny_llama, lesion.metrics.NextTokenLoss, lm_loss, False),
    "bert classifier": (tiny_bert, lesion.metrics.Classification, cls_loss, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_estimate_is_the_derivative_along_the_replacement(case):
    """Central finite differences of the loss (written out here) with unit j set to a + e (r - a), in float64,
    for neurons and heads: the estimate is that derivative at e = 0."""
    build, metric, loss, labelled = CASES[case]
    model = build()
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(6, 10, dtype=torch.long)
    mask[:2, 7:] = 0  # two padded sequences
    inputs = {"input_ids": torch.randint(0, 50, (6, 10), generator=gen), "attention_mask": mask}
    y = torch.randint(0, 3, (6,), generator=gen)
    data = (inputs, y) if labelled else inputs
    sites = find_sites(model, data)
    r = fitted_replacement(model, data, sites, "mean")
    est = estimates(model, data, sites, metric(), r)
    neurons, heads = [s for s in sites if not s.heads], [s for s in sites if s.heads]
    assert len(neurons) >= 2 and len(heads) == 2  # BERT's pooler (Tanh) is a site too
    for site, j in [(neurons[0], 5), (neurons[1], 40), (neurons[-1], 7), (heads[0], 2), (heads[-1], 3)]:
        up, down = (_loss_at(model, inputs, y, loss, site, j, r, e) for e in (1e-5, -1e-5))
        assert est[site.name][j] == pytest.approx((up - down) / 2e-5, rel=1e-5, abs=1e-9)


def _loss_at(model, inputs, y, loss, site, j, r, eps):
    """The loss with unit ``j`` of ``site`` moved ``eps`` of the way to its replacement (its mean)."""
    mean = r.means[site.name].double().reshape(site.width, site.group)[j]  # (group,)
    sl = slice(j * site.group, (j + 1) * site.group)

    def move(h):
        h = h.clone()
        h[..., sl] = h[..., sl] + eps * (mean - h[..., sl])
        return h

    module = dict(model.named_modules())[site.target]
    if site.hook == "input":
        handle = module.register_forward_pre_hook(lambda _m, inp: (move(inp[0]), *inp[1:]))
    else:
        handle = module.register_forward_hook(lambda _m, _i, out: move(out))
    try:
        with torch.no_grad():
            logits = model(**inputs).logits
    finally:
        handle.remove()
    return float(loss(logits, inputs, y))


def test_no_gradient_left_on_the_model_and_frozen_models_work():
    model = tiny_gpt2()
    data = {"input_ids": torch.randint(0, 50, (4, 8))}
    df = lesion.attribution_table(model, data, metric=lesion.metrics.NextTokenLoss(), exact=False)
    assert all(p.grad is None for p in model.parameters())
    model.requires_grad_(False)
    frozen = lesion.attribution_table(model, data, metric=lesion.metrics.NextTokenLoss(), exact=False)
    np.testing.assert_allclose(frozen["estimate"], df["estimate"], rtol=1e-5, atol=1e-7)
    assert "exact" not in df and len(df) == 2 * 128 + 2 * 4


def test_refusals():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(10, 3)
    with pytest.raises(LesionError, match="zero gradient at the intact model"):
        lesion.attribution_table(net, x, metric=lesion.metrics.KL())
    with pytest.raises(LesionError, match="needs the exact effects"):
        lesion.analyses.attribution.plot_attribution(
            lesion.attribution_table(net, x, metric=lesion.metrics.LogitDiff(0, 1), exact=False), "x"
        )
    with pytest.raises(LesionError, match="per-unit replacement"):
        lesion.attribution_table(
            net, (x, torch.zeros(10, dtype=torch.long)), replacement=lesion.replacements.Noise(1.0)
        )


def test_objective_sums_to_the_metric_main_column():
    """Summed over batches and divided by the counts, each objective is the metric's own main value."""
    from lesion.analyses.attribution import main_column, objective
    from lesion.core.batch import batches

    model = tiny_gpt2()
    mask = torch.ones(9, 8, dtype=torch.long)
    mask[:3, 5:] = 0
    lm = {"input_ids": torch.randint(0, 50, (9, 8)), "attention_mask": mask}
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4))
    x = torch.randn(9, 3)
    cases = [
        (model, lm, lesion.metrics.NextTokenLoss()),
        (model, lm, lesion.metrics.LogitDiff(4, 9)),
        (net, (x, torch.arange(9) % 4), lesion.metrics.Classification()),
        (net, (x, torch.randn(9, 4)), lesion.metrics.MSE()),
        (net, x, lesion.metrics.Scalar(lambda out, b: out.exp()[:, 1], name="e1")),
    ]
    for m, data, metric in cases:
        want = lesion.sweep(m, data, [], metric, batch_size=4).attrs["intact"][main_column(metric)]
        total = count = 0.0
        with torch.no_grad():
            for b in batches(data, batch_size=4):
                out = b.run(m)
                s, n = objective(metric, out.logits if hasattr(out, "logits") else out, b)
                total, count = total + float(s), count + n
        assert total / count == pytest.approx(want, rel=1e-5), type(metric).__name__
    with pytest.raises(LesionError, match="differentiabl"):
        detached = lesion.metrics.Scalar(lambda out, b: out[:, 0].detach(), name="d")
        lesion.attribution_table(net, x, metric=detached, exact=False)


def test_missed_rule_and_spearman():
    import pandas as pd

    from lesion.analyses.attribution import _compare

    # 20 units: unit 0 has the largest exact effect but the smallest estimate -> missed; unit 1 is not
    exact = np.array([10.0, 9.0] + [0.1 * i for i in range(18)])
    est = np.array([0.0, 9.0] + [0.1 * i + 0.01 for i in range(18)])
    df = pd.DataFrame({"unit": [f"a:{i}" for i in range(20)], "layer": "a", "estimate": est, "exact": exact})
    _compare(df)
    assert df.attrs["missed"] == ["a:0"] and df["missed"].sum() == 1
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert spearman([1.0, 2.0, 3.0], [2.0, 4.0, 9.0]) == pytest.approx(1.0)


def trained_gpt2(steps=300):
    """A 2-layer GPT-2 trained on sequences whose second half repeats the first (induction) and whose first
    half counts up by 3 modulo 50 from a random start: MLP and attention both have work to do."""
    model = tiny_gpt2(seed=3)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = synthetic(32, gen)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), float(loss.detach())


def synthetic(n, gen):
    start = torch.randint(0, 50, (n, 1), generator=gen)
    half = (start + 3 * torch.arange(4)) % 50
    noise = torch.randint(0, 50, (n, 4), generator=gen)
    first = torch.cat([half, noise], 1)  # (n, 8)
    return torch.cat([first, first], 1)  # (n, 16)


@pytest.fixture(scope="module")
def trained():
    return trained_gpt2()


@pytest.mark.parametrize("value", [0.0, "mean"])
def test_trained_gpt2_estimate_beside_exact(trained, value, tmp_path):
    model, final_loss = trained
    data = {"input_ids": synthetic(64, torch.Generator().manual_seed(1))}
    df = lesion.attribution_table(model, data, metric=lesion.metrics.NextTokenLoss(), replacement=value)
    rho = df.attrs["spearman"]
    print(f"\ntrained GPT-2 (final train loss {final_loss:.3f}), replacement {value!r}: Spearman rho", rho)
    print("missed:", df.attrs["missed"])
    assert len(df) == 2 * 128 + 2 * 4 and df[["estimate", "exact"]].notna().all().all()
    assert np.isfinite(df[["estimate", "exact"]].to_numpy()).all()
    assert set(rho) == {"all", *df["layer"].unique()} and all(np.isfinite(v) for v in rho.values())
    paths = lesion.analyses.attribution.plot_attribution(df, tmp_path / "attribution")
    assert all(p.stat().st_size > 1000 for p in paths)
