"""W11: every attention head of a ~1 B Llama-style model with grouped-query attention (16 x 32 query
heads over 8 key/value heads per block), beside a hook loop."""

from __future__ import annotations

from lesion.bench._common import _Context
from lesion.bench._real import beside_hook_loop, llama_1b, shared, tokens


def w11(ctx: _Context) -> dict:
    model = shared(ctx, "llama_1b", llama_1b)
    c = model.config
    data = tokens(ctx.sizes, c.vocab_size, ctx.device)
    units = [f"model.layers.{b}.self_attn:{h}" for b in range(c.num_hidden_layers)
             for h in range(c.num_attention_heads)]  # fmt: skip
    what = "every attention head of a Llama-3.2-1B-shaped model (grouped-query attention) deleted alone"
    out = beside_hook_loop(ctx, model, data, units, what + "; next-token loss and accuracy")
    out["parameters"] = sum(p.numel() for p in model.parameters())
    return out
