"""Direct effects of MLP neurons against an independent brute-force computation written here: add the
neuron's change to the residual stream at the final norm's input and run the norm with its scale frozen
by hand (GPT-2, Llama-style with a gated MLP, a plain-torch GPT); direct == total where nothing follows."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import lesion
import lesion.analyses.direct
from lesion.errors import SiteError

transformers = pytest.importorskip("transformers")
VOCAB = 40


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=16, bos_token_id=0, eos_token_id=0,
        pad_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.num_heads, self.head_dim = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        z = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(z.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(d), Attention(d, 4), nn.LayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict(fc=nn.Linear(d, 2 * d), act=nn.GELU(), proj=nn.Linear(2 * d, d)))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A plain-torch GPT: ``ln_f`` (or none) and an untied ``lm_head``."""

    def __init__(self, d=24, final_norm=True):
        super().__init__()
        torch.manual_seed(0)
        self.wte, self.wpe = nn.Embedding(VOCAB, d), nn.Embedding(16, d)
        self.blocks = nn.ModuleList([Block(d), Block(d)])
        self.ln_f = nn.LayerNorm(d) if final_norm else nn.Identity()
        self.lm_head = nn.Linear(d, VOCAB, bias=False)
        if final_norm:  # a non-trivial gamma and beta
            nn.init.normal_(self.ln_f.weight, 1.0, 0.3)
            nn.init.normal_(self.ln_f.bias, 0.0, 0.3)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def ids(n=6, t=10, seed=1):
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def logits_of(model, x):
    out = model(input_ids=x) if hasattr(model, "config") else model(x)
    return out.logits if hasattr(out, "logits") else out


def loss(logits, x):
    return float(nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1)))


def brute(model, x, act, j, row, norm, *, gate=None, value=0.0):
    """Delta loss when neuron ``j`` of ``act`` is replaced by ``value`` through the residual stream alone:
    ``row`` (d,) is its output-projection row; the norm runs with the intact sigma (or rms) by hand."""
    named = dict(model.named_modules())
    seen = {}
    hs = [named[act].register_forward_hook(lambda _m, _i, o: seen.__setitem__("a", o))]
    if gate:
        hs.append(named[gate].register_forward_hook(lambda _m, _i, o: seen.__setitem__("g", o)))
    with torch.no_grad():
        intact = logits_of(model, x)
    for h in hs:
        h.remove()
    change = (value - seen["a"][..., j]) * (seen["g"][..., j] if gate else 1.0)  # (batch, t)
    delta = change[..., None] * row  # (batch, t, d): what the MLP adds to the residual stream

    def frozen(m, inputs, _out):
        x0 = inputs[0]
        if isinstance(m, nn.LayerNorm):
            sigma = torch.sqrt(x0.var(-1, unbiased=False, keepdim=True) + m.eps)
            moved = x0 + delta
            return m.weight * (moved - moved.mean(-1, keepdim=True)) / sigma + m.bias
        rms = torch.sqrt((x0**2).mean(-1, keepdim=True) + m.variance_epsilon)  # Llama's RMSNorm
        return m.weight * (x0 + delta) / rms

    if norm is None:
        h = named["lm_head"].register_forward_pre_hook(lambda _m, inputs: (inputs[0] + delta,))
    else:
        h = named[norm].register_forward_hook(frozen)
    with torch.no_grad():
        lesioned = logits_of(model, x)
    h.remove()
    return loss(lesioned, x) - loss(intact, x)


def test_gpt2_direct_equals_brute_force():
    model, x = gpt2(), ids()
    df = lesion.direct_effects(model, {"input_ids": x}, total=False)
    assert df.attrs["final_norm"] == "transformer.ln_f" and df.attrs["unembedding"] == "lm_head"
    assert df.attrs["projections"]["transformer.h.0.mlp.act"] == "transformer.h.0.mlp.c_proj"
    assert len(df) == 2 * 128 and df.attrs["gates"]["transformer.h.1.mlp.act"] is None
    for layer, j in [(0, 3), (0, 100), (1, 7), (1, 127)]:
        name = f"transformer.h.{layer}.mlp.act"
        row = model.transformer.h[layer].mlp.c_proj.weight.detach()[j]  # Conv1D weight is (in, out)
        want = brute(model, x, name, j, row, "transformer.ln_f")
        got = df.loc[df.unit == f"{name}:{j}", "direct"].item()
        assert got == pytest.approx(want, abs=1e-5) and abs(want) > 1e-6
    batched = lesion.direct_effects(model, {"input_ids": x}, total=False, batch_size=4)  # 2 batches
    np.testing.assert_allclose(batched["direct"], df["direct"], atol=1e-6)


@pytest.mark.parametrize("value", [0.0, "mean"])
def test_llama_gated_mlp_direct_equals_brute_force(value):
    """Llama's MLP is down_proj(act_fn(gate_proj(x)) * up_proj(x)): the neuron's change at down_proj's input
    is (r - a) * up, found by matching the probe pass, not by names."""
    model, x = llama(), ids()
    df = lesion.direct_effects(model, {"input_ids": x}, replacement=value)
    assert df.attrs["final_norm"] == "model.norm"
    assert df.attrs["gates"]["model.layers.1.mlp.act_fn"] == "model.layers.1.mlp.up_proj"
    assert df.attrs["projections"]["model.layers.1.mlp.act_fn"] == "model.layers.1.mlp.down_proj"
    for layer, j in [(0, 5), (1, 0), (1, 47)]:
        name = f"model.layers.{layer}.mlp.act_fn"
        mlp = model.model.layers[layer].mlp
        row = mlp.down_proj.weight.detach()[:, j]  # Linear weight is (out, in)
        r = 0.0
        if value == "mean":
            with torch.no_grad():
                r = nn.functional.silu(mlp.gate_proj(_resid_in(model, layer, x)))[..., j].mean()
        want = brute(model, x, name, j, row, "model.norm", gate=f"{name[:-6]}up_proj", value=r)
        got = df.loc[df.unit == f"{name}:{j}", "direct"].item()
        assert got == pytest.approx(want, abs=1e-5) and abs(want) > 1e-6
    assert np.isfinite(df[["direct", "total", "ratio"]].to_numpy()).all()


def _resid_in(model, layer, x):
    """The input of block ``layer``'s MLP (after its post-attention norm), captured by a hook."""
    got = {}
    mlp = model.model.layers[layer].mlp
    h = mlp.register_forward_pre_hook(lambda _m, inputs: got.__setitem__("x", inputs[0]))
    with torch.no_grad():
        model(input_ids=x)
    h.remove()
    return got["x"]


def test_plain_gpt_direct_equals_brute_force_and_last_layer_without_norm_is_total(tmp_path):
    model, x = GPT(), ids()
    df = lesion.direct_effects(model, x, total=False)
    assert df.attrs["final_norm"] == "ln_f" and df.attrs["unembedding"] == "lm_head"
    for layer, j in [(0, 2), (1, 30)]:
        row = model.blocks[layer].mlp.proj.weight.detach()[:, j]
        want = brute(model, x, f"blocks.{layer}.mlp.act", j, row, "ln_f")
        assert df.loc[df.unit == f"blocks.{layer}.mlp.act:{j}", "direct"].item() == pytest.approx(
            want, abs=1e-5
        )
    bare = GPT(final_norm=False)
    df = lesion.direct_effects(bare, x, replacement="mean")
    assert df.attrs["final_norm"] is None
    last = df[df.layer == "blocks.1.mlp.act"]
    assert last["total"].abs().max() > 1e-3
    np.testing.assert_allclose(last["direct"], last["total"], atol=1e-5)  # nothing but the readout follows
    first = df[df.layer == "blocks.0.mlp.act"]
    assert (first["direct"] - first["total"]).abs().max() > 1e-4  # the last block carries part of it
    assert df.attrs["spearman"]["blocks.1.mlp.act"] == pytest.approx(1.0)
    assert all(p.stat().st_size > 1000 for p in lesion.analyses.direct.plot_direct(df, tmp_path / "direct"))


def test_logit_diff_and_kl_metrics():
    model, x = gpt2(), ids()
    diff = lesion.direct_effects(model, {"input_ids": x}, metric=lesion.metrics.LogitDiff(1, 2), total=False)
    kl = lesion.direct_effects(model, {"input_ids": x}, metric=lesion.metrics.KL(), total=False)
    assert diff.attrs["metric"] == "logit_diff" and np.isfinite(diff["direct"]).all()
    assert kl.attrs["metric"] == "kl" and (kl["direct"] >= -1e-7).all() and kl["direct"].max() > 0


def test_refusals():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(SiteError, match="logits \\(batch, positions, vocab\\)"):
        lesion.direct_effects(net, (torch.randn(5, 4), torch.zeros(5, dtype=torch.long)))
    model, x = gpt2(), ids()
    heads = [s for s in lesion.find_sites(model, {"input_ids": x[:2]}) if s.heads]
    with pytest.raises(SiteError, match="not a layer of MLP neurons"):
        lesion.direct_effects(model, {"input_ids": x}, sites=heads)
    with pytest.raises(lesion.LesionError, match="repeats=1"):
        lesion.direct_effects(model, {"input_ids": x}, replacement=lesion.replacements.Resample(repeats=2))


def test_a_post_mlp_norm_is_refused_not_silently_wrong():
    """Gemma 2 style: the MLP's output is normalised before the residual add; the direct path of this
    module does not apply, so it is an error rather than a wrong number."""
    import torch
    from torch import nn

    import lesion
    from lesion.errors import SiteError

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential()
            self.mlp.add_module("fc", nn.Linear(8, 16))
            self.mlp.add_module("act", nn.GELU())
            self.mlp.add_module("proj", nn.Linear(16, 8))
            self.post_norm = nn.LayerNorm(8)

        def forward(self, x):
            return x + self.post_norm(self.mlp(x))

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.block, self.ln_f, self.head = (
                nn.Embedding(11, 8),
                Block(),
                nn.LayerNorm(8),
                nn.Linear(8, 11),
            )

        def forward(self, ids):
            return self.head(self.ln_f(self.block(self.emb(ids))))

    ids = torch.randint(0, 11, (4, 5))
    with pytest.raises(SiteError, match=r"passes through the norm 'block\.post_norm'"):
        lesion.direct_effects(LM().eval(), [ids])
