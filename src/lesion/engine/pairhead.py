"""Pairs of units before a ReLU and a narrow last Linear: single-unit outputs plus sparse hinges.

The setting of ``lesion.engine.kinks``: a site read by a Linear (``W``, pre-activations ``z``), a ReLU,
and the model's last Linear (``V``, ``c`` outputs). Unit j adds ``x_j = a_j w_j`` to ``z`` (``a_j``: its
activity minus its replacement value). With ``m`` the ReLU's mask at the intact ``z`` and the Jacobians
``J = V diag(m) W`` (one GEMM per chunk), each unit deleted alone gives

    out_j = out - a_j J[:, j] + sum_p V[:, p] g_p(z_p, x_jp),
    g_p(b, x) = relu(b - x) - relu(b) + m_p x,

and the pair (i, j), whose base is ``z_i = z - x_i``, gives exactly

    out_ij = out_i + out_j - out + sum_p V[:, p] (g_p(z_ip, x_jp) - g_p(z_p, x_jp)).

``g_p(b, x)`` is zero unless ``b`` and ``b - x`` lie on different sides of zero or ``b`` itself lies on
the other side from ``z_p`` (unit i flipped unit p): where ``b`` is on ``z_p``'s side it is the hinge
``relu(s x - |b|)`` (``s`` the sign of ``b``), and where unit i flipped p it is that hinge plus
``(m_p - [b > 0]) x``. So a pair costs the single-unit outputs (computed once per chunk) plus the hinges
at the few (example, unit) pairs where some partner may cross zero, found through the p-norm bound of
``lesion.engine.kinks`` (a GEMM, which provably misses none), and at the units unit i flipped. The hinges
of every candidate against every partner are evaluated densely and summed by a batched GEMM (``bmm``),
``SLOTS`` candidates per example per layer, so no per-kink index arithmetic runs.

Values equal the dense computation ``V relu(z_i - x_j) + c`` up to float rounding; ``dense`` is that
computation, used where the bound is not finite or flags too many candidates to pay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lesion.engine.kinks import MARGIN, MAX_CANDIDATES, UNDER, P, ReluHead


def reach(a: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(batch, n) bounds on how far deleting any one unit moves each pre-activation down (``a_j W_pj >
    0``) and up, for ``a`` (batch, width) and ``w`` (n, width): the p-norm bound of
    ``lesion.engine.kinks`` over every unit, so it bounds any subset of partners too. None where it is
    not finite."""
    s = a.abs().amax(1, keepdim=True)
    t = w.abs().max()
    if not (bool(torch.isfinite(s).all()) and bool(torch.isfinite(t))):
        return None
    tiny = torch.finfo(a.dtype).tiny
    s_, t_ = s.clamp_min(tiny), t.clamp_min(tiny)
    wp, wn = (w.clamp_min(0) / t_) ** P, ((-w).clamp_min(0) / t_) ** P  # (n, width), in [0, 1]
    ap = (a.clamp_min(0) / s_) ** P
    if bool((a >= 0).all()):
        sums = torch.mm(ap, torch.cat([wp, wn]).T)
    else:
        an = ((-a).clamp_min(0) / s_) ** P
        sums = torch.mm(torch.cat([ap, an], 1), torch.cat([torch.cat([wp, wn]), torch.cat([wn, wp])], 1).T)
    bound = (sums.clamp_min_(0) ** (1 / P) * MARGIN + UNDER) * (s * t)
    n = w.shape[0]
    return bound[:, :n].contiguous(), bound[:, n:].contiguous()


def candidates(bounds, zb: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor | None:
    """(batch, n) bool: where some unit may push the base ``zb`` (at examples ``rows`` of the chunk;
    None: all) across zero, from ``reach``'s ``bounds``; None where anything is not finite or more than
    ``MAX_CANDIDATES`` are flagged (the dense step is cheaper)."""
    if bounds is None or not bool(torch.isfinite(zb).all()):
        return None
    down, up = bounds if rows is None else (b.index_select(0, rows) for b in bounds)
    near = torch.where(zb > 0, down, up) >= zb.abs()
    if float(near.float().mean()) > MAX_CANDIDATES:
        return None
    return near


def jacobians(head: ReluHead, z: torch.Tensor) -> torch.Tensor:
    """(batch, c, width): ``V diag(m_e) W`` for every example, the mask held at ``z``."""
    v, w = head.head.weight, head.inner.weight
    batch, n = z.shape
    mv = (z > 0).to(z.dtype).unsqueeze(1) * v.unsqueeze(0)  # (batch, c, n)
    return torch.mm(mv.view(-1, n), w).view(batch, v.shape[0], -1)


def hinges(
    res: torch.Tensor,
    zb: torch.Tensor,
    a: torch.Tensor,
    wk: torch.Tensor,
    v: torch.Tensor,
    near: torch.Tensor,
    flip: torch.Tensor | None = None,
    piece: int = 1 << 21,
) -> torch.Tensor | None:
    """Add ``sum_p V[:, p] g_p(zb_p, a_j W_pj)`` over the (example, unit) pairs ``near`` to ``res``
    ((batch, k, c): example e, partner j). ``zb`` (batch, n): the base; ``a`` (batch, k): what each
    partner adds; ``wk`` (n, k): their columns of ``W``; ``flip`` (batch, n): where the base lies on the
    other side of zero from the intact pre-activation (there ``g`` is ``relu(t - s x) - t``, ``t = |b|``:
    the hinge of the opposite sign plus a constant). Examples are taken by their number of candidates,
    a block at a time (at most about ``piece`` hinge values), each block padded to its largest count.
    Returns the constants of the flipped units, ``sum_p -t V[:, p]`` per example (batch, c), the same
    for every partner, for the caller to add (None without ``flip``)."""
    n, k = zb.shape[1], wk.shape[1]
    if flip is not None:
        near = near | flip
    cnt = near.sum(1)
    order = torch.argsort(cnt)
    counts = cnt.index_select(0, order).tolist()
    if not counts or counts[-1] == 0:
        return None
    e, p = near.index_select(0, order).nonzero(as_tuple=True)  # e: position in ``order``
    starts = [0]
    for q in counts:
        starts.append(starts[-1] + q)
    slot = torch.arange(len(e), device=e.device) - torch.tensor(starts[:-1], device=e.device).index_select(
        0, e
    )
    zc = zb.index_select(0, order)[e, p]
    neg = zc <= 0  # the sign s of the base: rows n.. of the stack hold -W
    thr = zc.abs()
    stack = torch.cat([wk, -wk, wk.new_zeros(1, k)])  # (2n + 1, k); row 2n pads
    cols = torch.cat([v.T, v.T, v.new_zeros(1, v.shape[0])])  # (2n + 1, c)
    const = None
    if flip is not None:
        fl = flip.index_select(0, order)[e, p]
        neg ^= fl
        const = torch.zeros(len(counts), v.shape[0], dtype=zb.dtype, device=zb.device)
        const.index_add_(0, order.index_select(0, e[fl]), cols.index_select(0, p[fl]) * thr[fl].unsqueeze(1))
        thr = torch.where(fl, -thr, thr)
    sidx = p + n * neg.long()
    a_s = a.index_select(0, order)
    end = len(counts)
    while end > 0 and counts[end - 1] > 0:
        q = counts[end - 1]
        begin = max(end - max(1, piece // (q * k)), 0)
        while counts[begin] == 0:
            begin += 1
        g, lo, hi = end - begin, starts[begin], starts[end]
        at = (e[lo:hi] - begin) * q + slot[lo:hi]
        idx = torch.full((g * q,), 2 * n, dtype=torch.long, device=e.device)
        idx[at] = sidx[lo:hi]
        t = torch.zeros(g * q, 1, dtype=zb.dtype, device=zb.device)
        t[at, 0] = thr[lo:hi]
        h = stack.index_select(0, idx).view(g, q, k)
        torch.addcmul(t.view(g, q, 1).neg_(), h, a_s[begin:end].unsqueeze(1), out=h).clamp_min_(0)
        got = torch.bmm(h.transpose(1, 2), cols.index_select(0, idx).view(g, q, -1))  # (g, k, c)
        res.index_add_(0, order[begin:end], got)
        end = begin
    return const


def dense(head: ReluHead, zb: torch.Tensor, a: torch.Tensor, wk: torch.Tensor, piece: int) -> torch.Tensor:
    """(batch, k, c): ``V relu(zb - a_j w_j) + c`` for each partner j, computed densely, partners in
    pieces of about ``piece`` elements of the moved pre-activations."""
    batch, n = zb.shape
    k = wk.shape[1]
    out = torch.empty(batch, k, head.head.out_features, dtype=zb.dtype, device=zb.device)
    step = max(1, piece // max(1, batch * n))
    for q in range(0, k, step):
        moved = zb.unsqueeze(0) - a[:, q : q + step].T.unsqueeze(2) * wk[:, q : q + step].T.unsqueeze(1)
        out[:, q : q + step] = head.head(F.relu(moved)).transpose(0, 1)
    return out


__all__ = ["candidates", "dense", "hinges", "jacobians", "reach"]
