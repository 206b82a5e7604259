"""lesion's own small transformers: a GPT-style decoder (``gpt``) and a ViT-style classifier (``vit``).

Both are pre-LayerNorm stacks of the same ``Block`` (multi-head attention, then an MLP), named like
GPT-2 so lesion's site finder sees them without tables: the MLP activation ``h.<i>.mlp.act`` is a
site of ``d_mlp`` neurons at every position, and each attention module ``h.<i>.attn`` declares
``n_head`` / ``head_dim`` and has its output projection ``c_proj``, so its heads are units of a head
view (the input of ``c_proj``, head h = channels ``h*head_dim .. (h+1)*head_dim - 1``).

>>> import torch
>>> net = gpt(vocab_size=20, context=8, d_model=16, n_layer=1, n_head=2, seed=0)
>>> tuple(net(torch.zeros(3, 8, dtype=torch.long)).shape)
(3, 8, 20)
>>> net = vit([1, 8, 8], 10, patch=4, d_model=16, n_layer=1, n_head=2, seed=0)
>>> tuple(net(torch.zeros(3, 1, 8, 8)).shape)
(3, 10)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lesion.errors import DataError, LesionError
from lesion.models._common import image_shape, positive_ints, seeded_init


class Attention(nn.Module):
    """Multi-head self-attention; ``causal`` masks later positions (a decoder)."""

    def __init__(self, d_model: int, n_head: int, causal: bool):
        super().__init__()
        self.n_head, self.head_dim, self.causal = n_head, d_model // n_head, causal
        self.c_attn = nn.Linear(d_model, 3 * d_model)  # queries, keys, values of every head
        self.c_proj = nn.Linear(d_model, d_model)  # the output projection; its input holds the heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape  # (batch, positions, d_model)
        q, k, v = (z.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
                   for z in self.c_attn(x).split(d, dim=2))  # fmt: skip  # each (b, heads, t, head_dim)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (b, heads, t, head_dim)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))  # heads side by side: (b, t, d)


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(d_model, d_mlp)
        self.act = nn.GELU()  # the site: (batch, positions, d_mlp) neurons
        self.proj = nn.Linear(d_mlp, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, d_model: int, n_head: int, d_mlp: int, causal: bool, dropout: float):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_head, causal)
        self.mlp = MLP(d_model, d_mlp, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token + position embedding, ``n_layer`` causal blocks, ``ln_f``, ``lm_head``: logits (b, t, vocab)."""

    def __init__(self, vocab_size, context, d_model, n_layer, n_head, d_mlp, dropout):
        super().__init__()
        self.vocab_size, self.context = vocab_size, context
        self.wte, self.wpe = nn.Embedding(vocab_size, d_model), nn.Embedding(context, d_model)
        self.h = nn.ModuleList(Block(d_model, n_head, d_mlp, True, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.ndim != 2 or input_ids.dtype.is_floating_point:
            raise DataError(
                f"input_ids of shape {tuple(input_ids.shape)} ({input_ids.dtype}); "
                "expected integer token ids (batch, positions)"
            )
        t = input_ids.shape[1]
        if t > self.context:
            raise DataError(f"sequences of {t} tokens; the model's context is {self.context} positions")
        x = self.wte(input_ids) + self.wpe(torch.arange(t, device=input_ids.device))  # (b, t, d)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (b, t, vocab)


class ViT(nn.Module):
    """Patch embedding, CLS token, ``n_layer`` blocks (no mask), ``ln_f``, ``head`` on CLS: (b, classes)."""

    def __init__(self, input_shape, n_classes, patch, d_model, n_layer, n_head, d_mlp, dropout):
        super().__init__()
        c, hgt, wid = input_shape
        n_patches = (hgt // patch) * (wid // patch)
        self.patch_embed = nn.Conv2d(c, d_model, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, d_model) * 0.02)
        self.h = nn.ModuleList(Block(d_model, n_head, d_mlp, False, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_embed(x).flatten(2).transpose(1, 2)  # (b, patches, d)
        x = torch.cat([self.cls_token.expand(len(p), -1, -1), p], dim=1) + self.pos_embed  # (b, 1+n, d)
        for block in self.h:
            x = block(x)
        return self.head(self.ln_f(x)[:, 0])  # (b, classes), from the CLS position


def _check(d_model: int, n_layer: int, n_head: int, d_mlp: int | None, dropout: float) -> int:
    positive_ints("d_model, n_layer, n_head", [d_model, n_layer, n_head], allow_empty=False)
    if d_model % n_head:
        raise LesionError(f"d_model={d_model} is not a multiple of n_head={n_head}; expected head_dim whole")
    if d_mlp is not None:
        positive_ints("d_mlp", [d_mlp], allow_empty=False, scalar=True)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise LesionError(f"dropout={dropout!r}; expected a probability in [0, 1)")
    return 4 * d_model if d_mlp is None else d_mlp


def gpt(
    vocab_size: int,
    context: int,
    d_model: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    d_mlp: int | None = None,
    dropout: float = 0.0,
    *,
    seed: int | None = None,
) -> GPT:
    """A GPT-style decoder over ``vocab_size`` tokens and ``context`` positions (``d_mlp`` default
    ``4 * d_model``); ``seed`` as in ``mlp``. Input: token ids (batch, t <= context)."""
    positive_ints("vocab_size, context", [vocab_size, context], allow_empty=False)
    d_mlp = _check(d_model, n_layer, n_head, d_mlp, dropout)
    return seeded_init(lambda: GPT(vocab_size, context, d_model, n_layer, n_head, d_mlp, dropout), seed)


def vit(
    input_shape,
    n_classes: int,
    patch: int = 4,
    d_model: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    d_mlp: int | None = None,
    dropout: float = 0.0,
    *,
    seed: int | None = None,
) -> ViT:
    """A ViT-style classifier of (channels, height, width) images cut into ``patch`` x ``patch`` patches
    (``patch`` must divide height and width); ``seed`` as in ``mlp``."""
    shape = image_shape(input_shape)
    positive_ints("n_classes, patch", [n_classes, patch], allow_empty=False)
    if shape[1] % patch or shape[2] % patch:
        raise LesionError(f"patch={patch} does not divide the image size {shape[1]}x{shape[2]}")
    d_mlp = _check(d_model, n_layer, n_head, d_mlp, dropout)
    build = lambda: ViT(shape, n_classes, patch, d_model, n_layer, n_head, d_mlp, dropout)  # noqa: E731
    return seeded_init(build, seed)
