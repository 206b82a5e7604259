"""Cumulative curves through a ReLU and a narrow last Linear, step by step with three kernels a step.

Where the model ends ``... -> site A -> Linear W (pre-activations z) -> ReLU (site B) -> Linear V (c
outputs, the model's output)`` and an order deletes units of A and B only, each step is:
- a unit u of A: ``z -= d_u w_u^T`` (``d_u``: what u adds, gathered for every A-step of the order at the
  start of the chunk), then the output ``V' relu(z) + c'`` (``V'``: V with the deleted B-columns zeroed,
  ``c'``: c plus their replacements' share), padded to a multiple of 16 outputs: three kernels;
- a unit j of B: the output loses ``V[:, j] (relu(z_j) - fill_j)``, a rank-1 update of the (batch, c)
  output; ``V'`` and ``c'`` change for the later steps.
The general path (``lesion.engine.cumulative``) does the same arithmetic through the traced graph's nodes,
at about 200 us of bookkeeping a step on top (2026-12-02, EPYC: one W2 order on 100 examples). Each
chunk's intact output from this loop must equal the model's own before the loop runs it, and every
order's last counts are re-run on the hook path (``lesion.engine.dispatch``) before the curve is trusted.

Measured and not kept (2026-12-02, EPYC, one W2 order): blocks of 16 A-steps linearised at the block's
ReLU mask (one (batch, n) @ (n, 16 c) GEMM) with exact corrections where a pre-activation crosses zero
were slower (9.5-10.2 s against 5.2-7.3 s step by step through the graph): 9% of (example, unit) pairs
cross within 16 steps, and each needs a correction at every later step of its block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx as fx

from lesion.core.batch import Batch
from lesion.core.metric import Metric
from lesion.engine.batched import _fills, _Pending
from lesion.engine.kinks import ReluHead

PAD = 16  # the last Linear's outputs padded to a multiple of this: 1,000 x 512 -> 10 runs 1.5-2x faster
GATHER = 0.25  # an A-step changing at most this share of the chunk's examples updates those alone
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}  # the chunk's own check, relative to the output's scale


class HeadCurve:
    """One chunk's pre-activations and masked last Linear during a cumulative order."""

    def __init__(self, head: ReluHead, z: torch.Tensor, fill_b: torch.Tensor | None):
        dt = z.dtype
        self.z = z.clone()  # (batch, n): current pre-activations
        n = z.shape[1]
        self.v = head.head.weight.to(dt)  # (c, n)
        self.c = self.v.shape[0]
        pad = -self.c % PAD
        self.vp = torch.cat([self.v, self.v.new_zeros(pad, n)])  # (c + pad, n): deleted columns zeroed
        bias = self.v.new_zeros(self.c) if head.head.bias is None else head.head.bias.to(dt)
        self.bias = torch.cat([bias, self.v.new_zeros(pad)])
        self.fill_b = None if fill_b is None else fill_b.to(dt)
        self.out = self.dense()

    def dense(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """(rows, c) the output from pre-activations ``z`` (default: the current ones) and the deletions."""
        return torch.addmm(self.bias, torch.relu(self.z if z is None else z), self.vp.T)[:, : self.c]

    def a_step(self, d: torch.Tensor, w: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Delete a unit of A that adds ``d`` (batch,) through column ``w`` (n,) of W; ``rows``: the
        examples where ``d`` is not zero, to update those alone (None: every example)."""
        if rows is None:
            self.z.addr_(d, w, alpha=-1)
            self.out = self.dense()
            return self.out
        zr = torch.addr(self.z.index_select(0, rows), d.index_select(0, rows), w, alpha=-1)
        self.z.index_copy_(0, rows, zr)
        out = self.out.clone()
        out[rows] = self.dense(zr)
        self.out = out
        return out

    def b_step(self, j: int) -> tuple[torch.Tensor, int]:
        """Delete unit ``j`` of B; the output and the number of examples it leaves unchanged."""
        lost = torch.relu(self.z[:, j])
        self.vp[:, j] = 0
        if self.fill_b is not None:
            f = self.fill_b[j]
            self.bias[: self.c] += self.v[:, j] * f
            lost = lost - f
        self.out = torch.addr(self.out, lost, self.v[:, j], alpha=-1)
        return self.out, int((lost == 0).sum())


def run_chunk(engine, spec, order, counts: Sequence[int], fills, metric: Metric, b: Batch, intact) -> bool:
    """Update ``metric`` with chunk ``b``'s points of one cumulative ``order`` (``counts`` sorted,
    distinct) through the head ``spec`` (from ``curve_head``); False, nothing done, where the chunk's
    values do not have the expected form or the head's output differs from the model's."""
    name_a, name_b, head, cons = spec
    plan = engine.plan
    node_a = plan.site[name_a]
    env = plan.run_until(b.x, {node_a, cons, plan.output})
    a, z, out = env.get(node_a), env.get(cons), env.get(plan.output)
    if not all(isinstance(t, torch.Tensor) and t.ndim == 2 for t in (a, z, out)):
        return False
    if z.dtype not in TOL or out.dtype != z.dtype or a.shape[1] != head.inner.in_features:
        return False
    fills = fills or {}
    state = HeadCurve(head, z, fills.get(name_b) if name_b else None)
    if not float((state.out - out).abs().amax()) <= TOL[z.dtype] * max(1.0, float(out.abs().amax())):
        return False
    steps = order[: counts[-1]]
    # what each A-step removes, (A-steps, batch) rows (an order names each unit once, as
    # ``lesion.analyses.curves.unit_order`` requires)
    idx = torch.tensor([unit for layer, unit in steps if layer == name_a], dtype=torch.long, device=z.device)
    d = (a.T[idx] - _fills(a, idx, fills.get(name_a)).unsqueeze(1)).to(z.dtype)
    w = head.inner.weight.to(z.dtype).T[idx]  # (A-steps, n) rows: contiguous vectors for addr
    batch = len(z)
    engine.examples += batch * len(steps)
    engine.computed += batch * len(steps)
    moved = (d != 0).sum(1).tolist()  # examples each A-step changes
    engine.unchanged += batch * len(d) - sum(moved)
    engine.computed -= batch * sum(m == 0 for m in moved)  # dead steps: nothing to compute
    pending = _Pending(engine, metric, b, intact)
    j = 0
    if counts[0] == 0:
        pending.add(out, 0, 1, copy=True)
        j = 1
    t = 0
    for step, (layer, unit) in enumerate(steps, start=1):
        if layer == name_a:
            if moved[t] == 0:  # the unit holds its replacement on every example: nothing changes
                now = state.out
            elif moved[t] <= GATHER * batch:
                now = state.a_step(d[t], w[t], d[t].nonzero().squeeze(1))
                engine.computed -= batch - moved[t]  # the unchanged examples were not recomputed
            else:
                now = state.a_step(d[t], w[t])
            t += 1
        else:
            now, same = state.b_step(unit)
            engine.unchanged += same
        if counts[j] == step:
            pending.add(now, j, 1, copy=False)  # a new tensor every step: nothing updates it in place
            j += 1
    pending.drain()
    return True


def curve_head(engine, order: Sequence[tuple[str, int]]) -> tuple[str, str | None, ReluHead, fx.Node] | None:
    """(site A, site B or None, the head, A's consumer node) where ``order`` deletes units of a site A
    whose Linear consumer is followed by a ReLU and a narrow last Linear, and of that ReLU's output (site
    B) only; None otherwise."""
    if not engine.head_curves:
        return None
    layers = {layer for layer, _ in order}
    plan = engine.plan
    for a in layers:
        cons = engine.consumers.get(a)
        head = engine._relu_head(cons, cons.node) if cons is not None else None
        if head is None:
            continue
        (act,) = cons.node.users
        b = next((name for name, node in plan.site.items() if node is act), None)
        if layers <= {a} | ({b} if b is not None else set()):
            return a, (b if b in layers else None), head, cons.node
    return None
