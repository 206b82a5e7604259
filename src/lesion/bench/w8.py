"""W8: every attention head of GPT-2 small deleted alone (144 heads), beside a hook loop."""

from __future__ import annotations

from lesion.bench._common import _Context
from lesion.bench._real import beside_hook_loop, gpt2_small, shared, tokens


def w8(ctx: _Context) -> dict:
    model = shared(ctx, "gpt2_small", gpt2_small)
    c = model.config
    data = tokens(ctx.sizes, c.vocab_size, ctx.device)
    units = [f"transformer.h.{b}.attn:{h}" for b in range(c.n_layer) for h in range(c.n_head)]
    return beside_hook_loop(ctx, model, data, units, "every attention head of GPT-2 small deleted alone; "
                            "next-token loss and accuracy")  # fmt: skip
