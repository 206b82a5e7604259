"""Where an attention head attends: its mean attention on the previous token, on the first token and on
earlier copies of the current token (the usual head types, each as a score), recorded from
``F.scaled_dot_product_attention`` during one pass and matched to the head sites in order."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lesion.core.batch import Data, batches
from lesion.core.sites import Site
from lesion.errors import DataError
from lesion.roles.tokens import input_ids
from lesion.util.modules import eval_mode


class _Patterns:
    """While open, ``F.scaled_dot_product_attention`` also records its attention probabilities (batch,
    heads, queries, keys), call by call; the function is restored on exit. It replaces a module attribute
    for the whole process: not for use while another thread runs attention (the explorer holds its lesion
    lock)."""

    def __enter__(self):
        self.calls: list[torch.Tensor] = []
        self.original = F.scaled_dot_product_attention

        def recording(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
            scores = q.float() @ _repeat_kv(k, q).float().transpose(-2, -1) * (scale or q.shape[-1] ** -0.5)
            tq, tk = scores.shape[-2:]
            if is_causal:
                scores = scores.masked_fill(
                    ~torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq), float("-inf")
                )
            if attn_mask is not None:
                scores = (
                    scores.masked_fill(~attn_mask, float("-inf"))
                    if attn_mask.dtype == torch.bool
                    else scores + attn_mask.float()
                )
            self.calls.append(torch.softmax(scores, -1).nan_to_num(0.0).cpu())
            return self.original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                 scale=scale, **kw)  # fmt: skip

        F.scaled_dot_product_attention = recording
        return self

    def __exit__(self, *exc):
        F.scaled_dot_product_attention = self.original


def _repeat_kv(k: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Keys repeated to the query heads (grouped-query attention)."""
    return k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3) if k.shape[-3] != q.shape[-3] else k


def head_patterns(model: nn.Module, data: Data, heads: Sequence[Site], batch_size: int) -> dict:
    """Per head site, (3, heads) mean attention on the previous token, on the first token, and on earlier
    copies of the current token (positions that have one); where the model's attention calls cannot be
    matched to its head sites, ``{"why": ...}``."""

    sums = {s.name: torch.zeros(3, s.width, dtype=torch.float64) for s in heads}
    counts = torch.zeros(3, dtype=torch.float64)
    order = sorted(heads, key=lambda s: s.order)
    for b in batches(data, batch_size=batch_size):
        with torch.no_grad(), eval_mode(model), _Patterns() as rec:
            b.run(model)
        if len(rec.calls) != len(order):
            return {"why": f"{len(rec.calls)} attention calls for {len(order)} head sites; cannot match them"}
        t = rec.calls[0].shape[-1]
        try:
            ids = input_ids(b).cpu()
        except DataError:  # not tokens (image patches): no copies of a token
            ids = torch.arange(len(b) * t).reshape(len(b), t)
        same = (ids[:, :, None] == ids[:, None, :]) & torch.ones(t, t, dtype=torch.bool).tril(-1)  # (b, t, t)
        has = same.any(-1)  # (b, t): an earlier copy exists
        counts += torch.tensor([ids.shape[0] * (t - 1), ids.shape[0] * (t - 1), float(has.sum())])
        for s, a in zip(order, rec.calls, strict=True):
            if a.shape[1] != s.width or a.shape[-1] != t:
                return {
                    "why": f"an attention call gave {tuple(a.shape)}; expected (batch, {s.width}, {t}, {t})"
                }
            prev = a.diagonal(offset=-1, dim1=-2, dim2=-1).sum((0, 2))  # (heads,)
            first = a[:, :, 1:, 0].sum((0, 2))
            dup = (a * same[:, None]).sum(-1)  # (b, heads, t)
            dup = (dup * has[:, None]).sum((0, 2))
            sums[s.name] += torch.stack([prev, first, dup]).double()
    return {name: (v / counts.clamp_min(1)[:, None]).numpy() for name, v in sums.items()}
