"""Attention heads in closed form through the output projection (``lesion.engine.prefixstubs``): every head
of GPT-2, a grouped-query Llama and NeoX swept on the module-prefix engine equals the hooked model, with the
attention stubbed (its output plus each head's change through the projection) rather than re-run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lesion
import lesion.engine.prefix as prefix
from lesion.core.sites import find_sites

transformers = pytest.importorskip("transformers")


def build(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_inner=64, vocab_size=40,
                                         n_positions=16, bos_token_id=0, eos_token_id=0,
                                         use_cache=False)  # fmt: skip
        return transformers.GPT2LMHeadModel(config).eval()
    if kind == "llama":  # 4 query heads over 2 key/value heads
        config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=40,
                                          max_position_embeddings=16, use_cache=False)  # fmt: skip
        return transformers.LlamaForCausalLM(config).eval()
    config = transformers.GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                        num_attention_heads=4, vocab_size=40, max_position_embeddings=16,
                                        use_cache=False)  # fmt: skip
    return transformers.GPTNeoXForCausalLM(config).eval()


def heads_of(model, data):
    return [f"{s.name}:{h}" for s in find_sites(model, data) if s.heads for h in range(s.width)]


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox"])
@pytest.mark.parametrize("replacement", [0.0, "mean"])
def test_every_head_in_closed_form_equals_the_hooked_model(kind, replacement, monkeypatch):
    model = build(kind)
    data = {"input_ids": torch.randint(0, 40, (6, 12), generator=torch.Generator().manual_seed(1))}
    units = heads_of(model, data)
    used = []
    real = prefix.head_output
    monkeypatch.setattr(prefix, "head_output", lambda *a: used.append(len(a[2])) or real(*a))
    metric = lesion.metrics.NextTokenLoss()
    lesions = [lesion.Lesion([u], replacement) for u in units]
    fast = lesion.sweep(model, data, lesions, metric, batch_size=3)
    slow = lesion.sweep(model, data, lesions, metric, batch_size=3, engine=False)
    assert fast.attrs["served"]["prefix"] == len(units)
    assert not [k for k in fast.attrs["engine_fallbacks"] if k.startswith("prefix")]
    assert sum(used) == 2 * len(units)  # two batches, every head through the closed form
    np.testing.assert_allclose(fast["loss"], slow["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast["accuracy"], slow["accuracy"], atol=1e-9)


def test_without_the_closed_form_the_numbers_are_the_same(monkeypatch):
    model = build("gpt2")
    data = {"input_ids": torch.randint(0, 40, (4, 12), generator=torch.Generator().manual_seed(2))}
    units = heads_of(model, data)
    metric = lesion.metrics.NextTokenLoss()
    on = lesion.sweep(model, data, units, metric)
    monkeypatch.setattr(prefix, "HEAD_STUB", False)
    off = lesion.sweep(model, data, units, metric)
    np.testing.assert_allclose(on["loss"], off["loss"], rtol=1e-6, atol=1e-7)


def test_an_attention_whose_output_is_not_the_projection_is_re_run(monkeypatch):
    """A wrapper that scales the attention's output after its projection: the recorded output no
    longer equals the projection's, so the attention runs for every lesion, and the numbers hold."""
    model = build("gpt2")
    attn = model.transformer.h[1].attn
    own = type(attn).forward
    monkeypatch.setattr(attn, "forward", lambda *a, **k: (lambda o: (o[0] * 1.5, *o[1:]))(own(attn, *a, **k)))
    data = {"input_ids": torch.randint(0, 40, (4, 12), generator=torch.Generator().manual_seed(3))}
    units = [u for u in heads_of(model, data) if u.startswith("transformer.h.1.")]
    used = []
    real = prefix.head_output
    monkeypatch.setattr(prefix, "head_output", lambda *a: used.append(1) or real(*a))
    metric = lesion.metrics.NextTokenLoss()
    fast = lesion.sweep(model, data, units, metric)
    slow = lesion.sweep(model, data, units, metric, engine=False)
    assert not used and fast.attrs["served"]["prefix"] == len(units)
    np.testing.assert_allclose(fast["loss"], slow["loss"], rtol=1e-5, atol=1e-6)
