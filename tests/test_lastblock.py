"""The last block's MLP neurons in closed form (a rank-1 change of the residual through the final norm and
the unembedding) equal the hooked model to 1e-5 on GPT-2, Llama (gated, grouped-query) and NeoX configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lesion
from lesion.core.batch import first_batch
from lesion.engine.graph import Unsupported
from lesion.engine.lastblock import plan_last_block

tf = pytest.importorskip("transformers")
V, T = 50, 12


def gpt2():
    return tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=T, vocab_size=V))


def llama():
    return tf.LlamaForCausalLM(tf.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=V, max_position_embeddings=T, pad_token_id=0,
    ))  # fmt: skip


def neox():
    return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=4, vocab_size=V,
        max_position_embeddings=T,
    ))  # fmt: skip


def model_data(make):
    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():  # norms away from their initial (1, 0): the closed form must use them
        for m in model.modules():
            if "norm" in type(m).__name__.lower():
                m.weight.normal_(1.0, 0.3)
                if getattr(m, "bias", None) is not None:
                    m.bias.normal_(0.0, 0.3)
    data = {"input_ids": torch.randint(1, V, (6, T), generator=torch.Generator().manual_seed(1))}
    sites = lesion.find_sites(model, data)
    return model, data, sites, [s for s in sites if not s.heads][-1]


@pytest.mark.parametrize("make", [gpt2, llama, neox], ids=["gpt2", "llama", "neox"])
def test_closed_form_logits_equal_the_hooked_model(make):
    model, data, _, last = model_data(make)
    plan = plan_last_block(model, last, first_batch(data, 6))
    assert plan.gated == (make is llama)
    x = {}
    h = plan.norm.register_forward_pre_hook(lambda _m, a: x.__setitem__("x", a[0]))
    src = {}
    if plan.gated:  # the projection's input: act(gate) * up
        hook_src = plan.proj.register_forward_pre_hook(lambda _m, a: src.__setitem__("a", a[0]))
    else:
        hook_src = model.get_submodule(last.target).register_forward_hook(
            lambda _m, _a, o: src.__setitem__("a", o)
        )
    with torch.no_grad():
        logits = model(**data).logits
    h.remove()
    hook_src.remove()
    units = torch.tensor([0, 5, 17, last.width - 1])
    delta = -src["a"][..., units].float()
    with torch.no_grad():
        got = plan.logits(x["x"], logits, delta, plan.directions(units))
        for k, j in enumerate(units.tolist()):
            with lesion.ablate(model, f"{last.name}:{j}"):
                want = model(**data).logits
            assert float((got[k] - want).abs().max()) < 1e-5


@pytest.mark.parametrize("make", [gpt2, llama, neox], ids=["gpt2", "llama", "neox"])
def test_the_sweep_serves_the_last_block_in_closed_form(make):
    model, data, sites, last = model_data(make)
    units = [f"{last.name}:{j}" for j in range(last.width)]
    metric = lesion.metrics.NextTokenLoss()
    fast = lesion.sweep(model, data, units, metric=metric)
    slow = lesion.sweep(model, data, units, metric=metric, engine=False)
    assert fast.attrs["served"].get("closed") == len(units)
    assert not any(k.startswith("closed") for k in fast.attrs["engine_fallbacks"])
    np.testing.assert_allclose(fast["delta_loss"], slow["delta_loss"], atol=1e-5)
    first = next(s for s in sites if not s.heads)  # the first block: not in closed form
    early = lesion.sweep(model, data, [f"{first.name}:0"], metric=metric)
    assert early.attrs["served"].get("closed", 0) == 0
    with pytest.raises(Unsupported, match="not in the last block"):
        plan_last_block(model, first, first_batch(data))


def test_constant_replacements_and_the_gated_exception():
    model, data, _, last = model_data(gpt2)
    units = [f"{last.name}:{j}" for j in range(8)]
    fast = lesion.sweep(model, data, [lesion.Lesion(u, "mean") for u in units], metric=lesion.metrics.KL())
    slow = lesion.sweep(
        model, data, [lesion.Lesion(u, "mean") for u in units], metric=lesion.metrics.KL(), engine=False
    )
    assert fast.attrs["served"].get("closed") == 8
    np.testing.assert_allclose(fast["kl"], slow["kl"], atol=1e-6)
    model, data, _, last = model_data(llama)
    mean = lesion.sweep(model, data, [lesion.Lesion(f"{last.name}:{j}", "mean") for j in range(4)],
                        metric=lesion.metrics.NextTokenLoss())  # fmt: skip
    assert mean.attrs["served"].get("closed", 0) == 0 and mean.attrs["served"]["prefix"] == 4
