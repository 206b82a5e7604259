"""Single-unit lesions before a ReLU and a narrow last Linear, as one GEMM plus exact kink corrections.

Where a site is read by a Linear (``W``, pre-activations ``z``), a ReLU, and then the model's last
Linear (``V``, ``c`` outputs, the model's output), deleting unit j of the site moves ``z`` of example e
to ``z' = z - a w_j`` (``a``: what unit j adds now, ``w_j``: column j of ``W``). Wherever no
pre-activation crosses zero, the ReLU keeps its mask ``m_e`` and the output moves exactly by
``-a (V diag(m_e) W)[:, j]``: one (batch x c, n) @ (n, k) GEMM gives every lesion's output (the
Jacobians). The units that do cross zero ("kinks") are corrected exactly, one term ``-V[:, i] r`` each.

Finding them costs a small share of the dense work: a pre-activation ``z_ei`` can cross only if some
lesion moves it by at least ``|z_ei|``, and ``max_j |a_ej W_ij|`` (over the lesions whose move has
the crossing sign) is bounded above by its p-norm, ``(sum_j |a_ej|^p |W_ij|^p)^(1/p)``: a GEMM. Only the
(example, unit) pairs under that bound (a few percent on a trained MLP) are checked, every lesion each;
the rest provably keep their mask. The bound is taken with a margin for float rounding and with every
term that could underflow counted at its largest possible size, so it never misses a kink.

Values equal the dense computation ``V relu(z - a w_j) + b`` up to float rounding; each sweep is still
checked against the hooked model on its own data (``lesion.engine.dispatch``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from lesion.engine.graph import plain_linear

P = 8  # the bound's norm: overestimates the largest term by at most n^(1/P) (2.2x at n = 512)
MARGIN = 1.01  # on the bound, for float rounding in the GEMM and the root
UNDER = 2e-5  # the largest scaled term whose P-th power can underflow (2^-126 ** (1 / 8) = 1.7e-5)
MAX_OUT = 64  # widest last Linear taken: the Jacobians cost (batch x out x n) per chunk
MAX_CANDIDATES = 0.25  # above this share of (example, unit) pairs to check, the dense step is cheaper


@dataclass(frozen=True)
class ReluHead:
    """The ReLU and the last Linear that follow a site's Linear consumer, and nothing else."""

    inner: nn.Linear  # the consumer: pre-activations z = W h + b
    head: nn.Linear  # the model's output: V relu(z) + c

    @torch.no_grad()
    def lesions(
        self, z: torch.Tensor, out: torch.Tensor, a: torch.Tensor, units: torch.Tensor, piece: int
    ) -> tuple[torch.Tensor, int] | None:
        """The model's output under each lesion, (k * batch, c) lesion-major, and the number of
        kinks corrected; None where the dense step is cheaper or the bound is not finite.

        ``z`` (batch, n): intact pre-activations; ``out`` (batch, c): intact output; ``a`` (batch, k): what
        each lesioned unit adds now (its activity minus its replacement); ``units`` (k,): their indices;
        ``piece``: most elements of a temporary while checking candidates."""
        batch, n = z.shape
        k = a.shape[1]
        v = self.head.weight
        w = self.inner.weight[:, units.to(z.device)]  # (n, k)
        if z.dtype != v.dtype or a.dtype != z.dtype:
            return None
        near = _candidates(z, a, w)
        if near is None:
            return None
        ce, ci = near
        # the Jacobians of the output under each lesion, mask held: V diag(m_e) W[:, units]
        # computed lesion-major: W[:, units]^T (k, n) @ (n, batch x c)
        mv = (z > 0).T.to(z.dtype).unsqueeze(2) * v.T.unsqueeze(1)  # (n, batch, c): m_e[i] V[c, i]
        jac = torch.mm(w.T, mv.view(n, -1)).view(k, batch, -1)
        res = torch.addcmul(out.unsqueeze(0), a.T.unsqueeze(2), jac, value=-1, out=jac)  # (k, batch, c)
        flat = res.view(k * batch, -1)
        flat1 = flat.view(-1)
        c = flat.shape[1]
        classes = torch.arange(c, device=z.device)
        vt = v.T.contiguous()  # (n, c)
        kinks = 0
        step = max(1, piece // max(1, k))
        for p in range(0, len(ce), step):
            e, i = ce[p : p + step], ci[p : p + step]
            zc = z[e, i]
            moved = torch.addcmul(zc.unsqueeze(1), a.index_select(0, e), w.index_select(0, i), value=-1)
            pos = zc > 0
            cross = (moved > 0) != pos.unsqueeze(1)
            idx = cross.view(-1).nonzero().squeeze(1)
            if len(idx) == 0:
                continue
            row, j = idx // k, idx % k
            r = moved.view(-1).index_select(0, idx)
            # crossing down (z > 0 >= z'): the mask-held output subtracted a w too much by -z'; up: it
            # missed relu(z') = z'
            r = torch.where(pos.index_select(0, row), -r, r)
            src = vt.index_select(0, i.index_select(0, row)) * r.unsqueeze(1)  # (kinks, c)
            at = (j * batch + e.index_select(0, row)).unsqueeze(1) * c + classes
            flat1.index_add_(0, at.view(-1), src.view(-1))  # one element at a time: 3x index_put_ rows
            kinks += len(idx)
        return flat, kinks


def _candidates(z: torch.Tensor, a: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """(examples, units) whose pre-activation some lesion may move across zero (a superset), or None
    where the bound is not finite or flags too many pairs for the shortcut to pay."""
    n = z.shape[1]
    s = a.abs().amax(1, keepdim=True)  # (batch, 1): per-example scale
    t = w.abs().max()
    if not (bool(torch.isfinite(s).all()) and bool(torch.isfinite(t)) and bool(torch.isfinite(z).all())):
        return None
    s_, t_ = s.clamp_min(torch.finfo(z.dtype).tiny), t.clamp_min(torch.finfo(z.dtype).tiny)
    wp, wn = (w.clamp_min(0) / t_) ** P, ((-w).clamp_min(0) / t_) ** P  # (n, k), in [0, 1]
    ap = (a.clamp_min(0) / s_) ** P
    # z > 0 crosses where a w > 0; z <= 0 where a w < 0 (columns n.. of the GEMM's output)
    if bool((a >= 0).all()):
        sums = torch.mm(ap, torch.cat([wp, wn]).T)
    else:
        an = ((-a).clamp_min(0) / s_) ** P
        sums = torch.mm(torch.cat([ap, an], 1), torch.cat([torch.cat([wp, wn]), torch.cat([wn, wp])], 1).T)
    sums = torch.where(z > 0, sums[:, :n], sums[:, n:])
    bound = (sums.clamp_min(0) ** (1 / P) * MARGIN + UNDER) * (s * t)
    near = bound >= z.abs()
    if float(near.float().mean()) > MAX_CANDIDATES:
        return None
    return near.nonzero(as_tuple=True)


def relu_head(plan, start: fx.Node) -> ReluHead | None:
    """The ``ReluHead`` after ``start`` (a plain Linear consumer's node) in ``plan``'s graph: its only
    reader a ReLU, whose only reader (through eval-mode dropout or Identity) is a plain Linear of at most
    ``MAX_OUT`` outputs that is the graph's output itself. None for anything else (any other layer after
    it, an output tuple, ...)."""
    inner = plan.modules.get(start.target) if start.op == "call_module" else None
    if not (isinstance(inner, nn.Linear) and plain_linear(inner)) or len(start.users) != 1:
        return None
    (act,) = start.users
    if not _is_relu(plan, act) or act.all_input_nodes != [start]:
        return None
    found = plan.reader(act)  # through eval-mode dropout or Identity
    if found is None:
        return None
    prev, last = found
    head = plan.modules.get(last.target) if last.op == "call_module" else None
    if not (isinstance(head, nn.Linear) and plain_linear(head)) or head.out_features > MAX_OUT:
        return None
    if len(last.users) != 1 or next(iter(last.users)) is not plan.output or plan.output.args[0] is not last:
        return None
    if last.args != (prev,) or last.kwargs:
        return None
    return ReluHead(inner, head)


def _is_relu(plan, n: fx.Node) -> bool:
    if n.op == "call_module":
        return type(plan.modules.get(n.target)) is nn.ReLU and len(n.args) == 1 and not n.kwargs
    if n.op == "call_function":
        return n.target in (torch.relu, F.relu) and len(n.args) == 1 and set(n.kwargs) <= {"inplace"}
    return n.op == "call_method" and n.target == "relu" and len(n.args) == 1 and not n.kwargs
