"""W9: every MLP neuron of one block of GPT-2 small deleted alone (3,072 neurons of the last block, in
closed form through the final norm and the unembedding), beside a hook loop."""

from __future__ import annotations

from lesion.bench._common import _Context
from lesion.bench._real import beside_hook_loop, gpt2_small, shared, tokens


def w9(ctx: _Context) -> dict:
    model = shared(ctx, "gpt2_small", gpt2_small)
    c = model.config
    data = tokens(ctx.sizes, c.vocab_size, ctx.device)
    width = c.n_inner or 4 * c.n_embd
    units = [f"transformer.h.{c.n_layer - 1}.mlp.act:{j}" for j in range(width)]
    return beside_hook_loop(ctx, model, data, units, "every MLP neuron of GPT-2 small's last block deleted "
                            "alone; next-token loss and accuracy")  # fmt: skip
