"""The last block's MLP neurons in closed form: a rank-1 change of the residual through the final norm.

Deleting neuron j of the last block's MLP (GPT-2, NeoX, Llama) moves the residual that enters the final
norm by ``delta_t * w_j`` at each position t: ``w_j`` is the down projection's column j and ``delta_t``
the change of its input (``fill - a_j`` where the site feeds the projection directly; ``-u_j`` for a
gated MLP, Llama's ``act(gate) * up``, with the zero replacement). With ``x`` the residual, LayerNorm
``y = g (x - mean x) / s + b`` (RMSNorm: no centring, no ``b``) and the unembedding ``U`` (bias ``c``):

    xc' = xc + delta wc,   s'^2 = s^2 + (2 delta xc.wc + delta^2 |wc|^2) / d
    logits' = (logits - c0) s / s' + (delta / s') U (g * wc) + c0,   c0 = U b + c

so every lesion costs O(vocabulary) per token (two scaled vectors) instead of O(width x vocabulary).
The structure is read off one recorded forward pass (the head is ``get_output_embeddings()``, the norm
the module whose output it reads, nothing but dropout between the projection and the norm) and the
closed form must reproduce the intact logits first; ``lesion.engine.dispatch`` then checks it against
the hooked model on each sweep's data like every fast path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lesion.core.batch import Batch, output_tensor
from lesion.core.metric import Metric
from lesion.core.sites import Site
from lesion.engine.graph import Unsupported

STEP = 8 << 20  # most logits (elements) held at once: lesions x examples x positions x vocabulary
_PASS = (nn.Dropout, nn.Identity)


@dataclass
class LastBlock:
    """The closed form for one site: its down projection, the final norm and the unembedding."""

    site: Site
    proj: nn.Module  # Linear (weight (d, width)) or GPT-2's Conv1D (weight (width, d))
    proj_name: str
    norm: nn.Module
    norm_name: str
    head: nn.Linear
    gated: bool  # the site does not feed the projection directly (Llama's act(gate) * up)
    rms: bool

    def directions(self, units: torch.Tensor) -> torch.Tensor:
        """(k, d): the residual direction each unit writes."""
        w = self.proj.weight
        return (w[:, units].T if isinstance(self.proj, nn.Linear) else w[units]).float()

    def logits(self, x, logits, delta, w) -> torch.Tensor:
        """(k, batch, t, V) logits with ``delta`` (batch, t, k) along ``w`` (k, d) added to residual ``x``."""
        g = self.norm.weight.float()
        beta = getattr(self.norm, "bias", None)
        x = x.float()
        d = x.shape[-1]
        if not self.rms:
            x = x - x.mean(-1, keepdim=True)
            w = w - w.mean(-1, keepdim=True)
        s2 = x.pow(2).mean(-1, keepdim=True)  # (batch, t, 1): the variance (the mean square for RMSNorm)
        new = s2 + (2 * delta * (x @ w.T) + delta.pow(2) * w.pow(2).sum(-1)) / d  # (batch, t, k)
        eps = _eps(self.norm)
        scale = torch.sqrt((s2 + eps) / (new + eps))  # s / s'
        u = self.head.weight.float()
        q = (w * g) @ u.T  # (k, V)
        c0 = self._c0(u, beta)
        base = logits.float() - c0  # (batch, t, V)
        k = w.shape[0]
        out = base.unsqueeze(0) * scale.permute(2, 0, 1).unsqueeze(-1)  # (k, batch, t, V)
        coef = (delta * scale / torch.sqrt(s2 + eps)).permute(2, 0, 1).unsqueeze(-1)  # delta / s'
        out.add_(coef * q.reshape(k, 1, 1, -1))
        return out.add_(c0)

    def _c0(self, u: torch.Tensor, beta) -> torch.Tensor:
        c0 = torch.zeros(u.shape[0], dtype=torch.float32, device=u.device)
        if beta is not None and not self.rms:
            c0 = c0 + u @ beta.float()
        if self.head.bias is not None:
            c0 = c0 + self.head.bias.float()
        return c0


def _eps(norm: nn.Module) -> float:
    for attr in ("eps", "variance_epsilon"):
        if hasattr(norm, attr):
            return float(getattr(norm, attr))
    raise Unsupported(f"final norm {type(norm).__name__} has no eps")


def plan_last_block(model: nn.Module, site: Site, batch: Batch, memo: dict | None = None) -> LastBlock:
    """The closed form for ``site``, read off one recorded pass on ``batch`` (kept in ``memo`` for the
    other sites of the same sweep); Unsupported where the site is not an MLP neuron site of the last
    block before a LayerNorm/RMSNorm and a Linear unembedding."""
    if site.hook != "output" or site.heads or site.group != 1 or site.flat or len(site.shape) != 2:
        raise Unsupported(f"site {site.name!r} is not a (position, neuron) MLP site")
    if site.unit_dim not in (-1, 2):
        raise Unsupported(f"site {site.name!r}: units are not on the last axis")
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if not isinstance(head, nn.Linear):
        raise Unsupported("the model has no Linear output embedding (get_output_embeddings)")
    named = dict(model.named_modules())
    head_name = next(n for n, m in named.items() if m is head)
    memo = {} if memo is None else memo
    if "record" not in memo:
        memo["record"] = _record(model, batch, named)
    calls, ids = memo["record"]
    norm_name = next((n for n, (_, _, out_id, _) in calls.items() if out_id == ids[head_name][0]), None)
    if norm_name is None or norm_name == head_name:
        raise Unsupported("no single module feeds the output embedding")
    norm = named[norm_name]
    rms = "rmsnorm" in type(norm).__name__.lower()
    if not (isinstance(norm, nn.LayerNorm) or rms):
        raise Unsupported(f"the final norm is a {type(norm).__name__}; expected LayerNorm or RMSNorm")
    if site.target not in calls or calls[site.target][3] != 1:
        raise Unsupported(f"site {site.name!r}: its module does not run once per pass")
    after = calls[site.target][1]
    width = site.width
    projs = [
        n for n, (st, _, _, c) in calls.items() if st > after and c == 1 and _in_width(named[n]) == width
    ]
    if not projs:
        raise Unsupported(f"site {site.name!r}: no projection of its width runs after it")
    proj_name = min(projs, key=lambda n: calls[n][0])
    between = [n for n, (st, _, _, _) in calls.items() if calls[proj_name][1] < st < calls[norm_name][0]]
    if any(not isinstance(named[n], _PASS) for n in between) or calls[norm_name][0] < calls[proj_name][1]:
        raise Unsupported(f"site {site.name!r} is not in the last block: {between[:3]} run before the norm")
    gated = ids[proj_name][0] != calls[site.target][2]
    return LastBlock(site, named[proj_name], proj_name, norm, norm_name, head, gated, rms)


def _in_width(m: nn.Module) -> int | None:
    if isinstance(m, nn.Linear):
        return m.in_features
    if type(m).__name__ == "Conv1D":
        return int(m.weight.shape[0])
    return None


def _key(x) -> tuple | None:
    """What identifies a tensor's values through views (HF models reshape and slice between modules)."""
    return (x.data_ptr(), x.numel(), x.dtype) if isinstance(x, torch.Tensor) else None


def _record(model, batch: Batch, named) -> tuple[dict, dict]:
    """{name: (start, end, key(output), calls)} and {name: (key(input),)} of one pass."""
    counter, calls, ids, keep, handles = [0], {}, {}, [], []

    def pre(name):
        def fn(_m, args):
            c = calls.get(name, (counter[0], -1, None, 0))
            calls[name] = (c[0], c[1], c[2], c[3] + 1)
            ids[name] = (_key(args[0]) if args else None,)
            keep.append(args)
            counter[0] += 1

        return fn

    def post(name):
        def fn(_m, _args, out):
            c = calls[name]
            calls[name] = (c[0], counter[0], _key(out), c[3])
            keep.append(out)
            counter[0] += 1

        return fn

    for name, m in named.items():
        if name:
            handles += [m.register_forward_pre_hook(pre(name)), m.register_forward_hook(post(name))]
    try:
        with torch.no_grad():
            keep.append(batch.run(model))
    finally:
        for h in handles:
            h.remove()
    return calls, ids


def closed_form_units(
    plan: LastBlock,
    model: nn.Module,
    batches: Callable[[], Iterable[Batch]],
    units: Sequence[int],
    fill: torch.Tensor | None,
    metric: Metric,
    needs_intact: bool,
) -> None:
    """Update ``metric`` (lesion l for ``units[l]``) with each unit deleted alone (``fill``: (width,)
    replacement values; None: zero), from one intact pass per batch."""
    if plan.gated and fill is not None and bool(fill.any()):
        raise Unsupported(f"site {plan.site.name!r} is gated: only the zero replacement has a closed form")
    named = dict(model.named_modules())
    units_t = torch.as_tensor(list(units), dtype=torch.long)
    for b in batches():
        got = _capture(model, b, named, plan)
        logits = output_tensor(got["__out__"])
        x = got[plan.norm_name]
        _check_intact(plan, x, logits)
        source = got[plan.proj_name] if plan.gated else got[plan.site.target]  # (batch, t, width)
        w = plan.directions(units_t.to(x.device))
        per = logits[0].numel()  # positions x vocabulary of one example
        rows = max(1, min(len(b), STEP // per))
        for i in range(0, len(b), rows):
            sub = b.slice(i, i + rows)
            n = len(sub)
            step = max(1, STEP // (n * per))
            for q in range(0, len(units_t), step):
                js = units_t[q : q + step]
                a = source[i : i + n][..., js.to(source.device)].float()  # (n, t, k)
                delta = (0 if fill is None else fill[js].to(a)) - a if not plan.gated else -a
                out = plan.logits(x[i : i + n], logits[i : i + n], delta, w[q : q + step])
                intact = logits[i : i + n] if needs_intact else None
                metric.update(out, sub, slice(q, q + len(js)), intact=intact)


def _capture(model, b: Batch, named, plan: LastBlock) -> dict:
    got: dict[str, torch.Tensor] = {}
    handles = [
        named[plan.norm_name].register_forward_pre_hook(lambda _m, a: got.__setitem__(plan.norm_name, a[0]))
    ]
    if plan.gated:
        handles.append(named[plan.proj_name].register_forward_pre_hook(
            lambda _m, a: got.__setitem__(plan.proj_name, a[0])))  # fmt: skip
    else:
        handles.append(named[plan.site.target].register_forward_hook(
            lambda _m, _a, out: got.__setitem__(plan.site.target, out)))  # fmt: skip
    try:
        got["__out__"] = b.run(model)
    finally:
        for h in handles:
            h.remove()
    return got


def _check_intact(plan: LastBlock, x: torch.Tensor, logits: torch.Tensor) -> None:
    """The closed form with no change must give the model's own logits (else the norm is not as read)."""
    zero = torch.zeros(*x.shape[:-1], 1, dtype=torch.float32, device=x.device)
    again = plan.logits(x, logits, zero, torch.zeros(1, x.shape[-1], device=x.device))[0]
    direct = plan.head(plan.norm(x)).float()
    scale = float(direct.abs().max()) or 1.0
    if not bool(torch.allclose(again, direct, rtol=1e-4, atol=1e-4 * scale)) or not bool(
        torch.allclose(logits.float(), direct, rtol=1e-4, atol=1e-4 * scale)
    ):
        raise Unsupported("the final norm and output embedding do not reproduce the model's logits")


__all__ = ["LastBlock", "closed_form_units", "plan_last_block"]
