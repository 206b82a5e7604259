"""A tiny GPT-2 trained on a synthetic token pattern, shared by the transformer explorer's tests.

Each sequence repeats three random tokens (``a b c a b c ...``): after the first three tokens every next
token is predictable, so a trained model's loss there is near 0 and deleting a head that copies from three
positions back hurts it visibly.
"""

from __future__ import annotations

import functools

import pytest
import torch

VOCAB, SEQ = 24, 12


def pattern(n: int, seed: int, seq: int = SEQ) -> torch.Tensor:
    """(n, seq) token ids: three random tokens per sequence, repeated."""
    start = torch.randint(0, VOCAB, (n, 3), generator=torch.Generator().manual_seed(seed))
    return start.repeat(1, seq // 3 + 1)[:, :seq]


@functools.cache
def tiny_gpt(steps: int = 150) -> torch.nn.Module:
    """GPT-2: 2 blocks, 4 heads of 8 dims, 64 MLP neurons, trained ``steps`` AdamW steps (a few seconds)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, n_inner=64, vocab_size=VOCAB, n_positions=16, bos_token_id=0,
        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        x = pattern(16, seed=1000 + step)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


class ToyTokenizer:
    """Token strings ``t0``, ``t1``... for ids, as a Hugging Face tokenizer's convert_ids_to_tokens gives."""

    def convert_ids_to_tokens(self, ids):
        return [f"t{i}" for i in ids]
