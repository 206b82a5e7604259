"""Pair lesions of one layer (two units deleted together) as rank-2 updates of its consumer.

Where a site is read by a Linear (``W``, pre-activations ``z``), deleting units i and j moves ``z`` to
``z - a_i w_i - a_j w_j``: a rank-2 update. Pairs are taken in groups that share their first unit i.

- The consumer is the model's output (a classifier's last hidden layer): the logits in closed form,
  ``out - a_i w_i - a_j w_j``, O(classes) per pair and example.
- A ReLU and the model's last, narrow Linear follow (the shape ``lesion.engine.kinks`` serves; an MLP's
  earlier hidden layers): every unit alone once per chunk (Jacobians plus the kinks it causes), and a
  pair as ``out_i + out_j - out`` plus the hinges where the pair's kinks differ from j's own, on the
  examples where unit i adds something; elsewhere the pair is j alone (``lesion.engine.pairhead``).
- Any other traced model: the rank-2 pre-activations of many pairs per pass through the later layers.

Outputs are written class-major, ``(classes, pairs, examples)``, the layout the metric reads without a
copy. Values equal the dense computation up to float rounding; ``lesion.analyses.pairs`` checks every
call against the double-hooked model on a sample of its pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lesion.core.metric import Metric
from lesion.engine.batched import Engine, _fills
from lesion.engine.graph import Unsupported
from lesion.engine.pairhead import candidates, dense, hinges, jacobians, reach


def pair_units(
    engine: Engine,
    layer: str,
    pairs: Sequence[tuple[int, int]],
    fill: torch.Tensor | None,
    metric: Metric,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Update ``metric`` (lesion p for ``pairs[p]``) with both units of each pair of ``layer`` clamped to
    ``fill`` ((width,) values; None: zero). Pairs sharing a first unit must be adjacent (sorted).

    A consumer that is the model's output: the logits in closed form; through a ReLU head: the kink
    shortcut per first unit; any other model after a Linear consumer: the consumer's rank-2
    pre-activations run through the traced later layers, many pairs per pass."""
    engine._site(layer)  # a plain (batch, units) site, or Unsupported
    cons = engine.consumers[layer]
    if cons is None or not isinstance(cons.module, nn.Linear):
        raise Unsupported(f"site {layer!r} has no Linear consumer: pairs go through the hooked model")
    head = engine._relu_head(cons, cons.node)
    groups = _groups(pairs)
    node, start = engine.plan.site[layer], cons.node
    front = engine.plan.frontier([start])
    down = engine.plan.downstream(start)
    last = engine.plan.output.args[0] is start and list(start.users) == [engine.plan.output]
    w = cons.module.weight  # (n, width)
    done = 0
    for b in engine.chunks:
        intact = engine._intact(metric, b.x)
        vals = engine.plan.run_until(b.x, set(front) | {node})
        h, z = vals[node], vals[start]
        if not (isinstance(h, torch.Tensor) and h.ndim == 2 and isinstance(z, torch.Tensor) and z.ndim == 2):
            raise Unsupported(f"site {layer!r}: pairs need (batch, units) activations")
        width = h.shape[1]
        a = h - _fills(h, torch.arange(width), fill).reshape(1, width)  # (batch, width): what each unit adds
        if last and z.dtype == w.dtype:
            _closed(engine, groups, z, a, w, metric, b, intact)
        elif head is None or z.dtype != head.head.weight.dtype or a.dtype != z.dtype:
            _through_graph(engine, groups, vals, front, down, start, z, a, w, metric, b, intact)
        else:
            _through_head(engine, head, groups, z, a, w, metric, b, intact)
        done += len(b)
        if progress is not None:
            progress(done)


def _closed(engine, groups, z, a, w, metric, b, intact) -> None:
    """The consumer is the model's output: pair (i, j) gives ``z - a_i w_i - a_j w_j`` exactly, O(classes)
    per pair and example, written class-major (the layout the metric reads without a copy)."""
    batch = len(z)
    k_max = max(1, engine.budget // max(1, 4 * batch * z.shape[1]))
    for i, first, js in groups:
        zi = torch.addr(z, a[:, i], w[:, i], alpha=-1).T.unsqueeze(1)  # (c, 1, batch)
        for q in range(0, len(js), k_max):
            part = torch.as_tensor(js[q : q + k_max], dtype=torch.long, device=z.device)
            aj = a.index_select(1, part).T.unsqueeze(0)  # (1, k, batch)
            out = torch.addcmul(zi, w.index_select(1, part).unsqueeze(2), aj, value=-1)  # (c, k, batch)
            engine.examples += len(part) * batch
            engine.computed += len(part) * batch
            _score(engine, metric, out, b, first + q, intact)


def _through_head(engine, head, groups, z, a, w, metric, b, intact) -> None:
    """Pairs through the ReLU head (``lesion.engine.pairhead``): every unit alone once per chunk, then
    per first unit i, on the examples where unit i adds something, its output plus each partner's change
    alone plus the hinges where the pair's kinks differ from the partner's own; elsewhere the partner's
    single-unit output as it is."""
    piece = max(1, engine.budget // 4)
    v = head.head.weight
    batch, width = a.shape
    bounds = reach(a, w)
    out = F.linear(F.relu(z), v, head.head.bias)  # (batch, c): the intact output
    jac = jacobians(head, z)  # (batch, c, width)
    near = candidates(bounds, z)
    lin = torch.empty(batch, width, v.shape[0], dtype=z.dtype, device=z.device)  # (batch, width, c)
    torch.addcmul(out.unsqueeze(1), a.unsqueeze(2), jac.transpose(1, 2), value=-1, out=lin)  # masks held
    if near is None:
        engine.declined += 1
        single = dense(head, z, a, w, piece)
        kinks = single - lin  # what the ReLU's kinks add to each unit's own lesion
    else:
        kinks = torch.zeros(lin.shape, dtype=z.dtype, device=z.device)
        hinges(kinks, z, a, w, v, near, piece=piece)
        single = lin + kinks
    del jac, lin
    singles = single.permute(2, 1, 0).contiguous()  # (c, width, batch): class-major
    kinks = kinks.view(batch * width, -1)
    for i, first, js in groups:
        part = torch.as_tensor(js, dtype=torch.long, device=z.device)
        res = singles.index_select(1, part)  # (c, k, batch): where unit i adds nothing, the partner alone
        rows = (a[:, i] != 0).nonzero().squeeze(1)
        if len(rows):
            zr = z.index_select(0, rows)
            zi = torch.addr(zr, a[rows, i], w[:, i], alpha=-1)  # (rows, n): unit i deleted
            ar = a.index_select(0, rows).index_select(1, part)
            wk = w.index_select(1, part)
            near = candidates(bounds, zi, rows)
            if near is None:  # the bound flags too many: the dense step is cheaper
                engine.declined += 1
                got = dense(head, zi, ar, wk, piece)  # (rows, k, c)
                res.index_copy_(2, rows, got.permute(2, 1, 0))
            else:
                flip = (zi > 0) != (zr > 0)
                # out_i - out + (the pair's hinges) - (the partner's own), added to the partner alone
                at = (rows.unsqueeze(1) * width + part.unsqueeze(0)).view(-1)
                delta = kinks.index_select(0, at).view(len(rows), len(part), -1).neg_()
                shift = singles[:, i].index_select(1, rows).T - out.index_select(0, rows)  # out_i - out
                const = hinges(delta, zi, ar, wk, v, near, flip, piece)
                delta += (shift if const is None else shift - const).unsqueeze(1)
                res.index_add_(2, rows, delta.permute(2, 1, 0))
        engine.examples += len(js) * len(b)
        engine.computed += len(js) * len(rows)
        _score(engine, metric, res, b, first, intact)


def _score(engine, metric, out, b, first, intact) -> None:
    """Score ``out`` (c, k, batch), class-major, as lesions ``first ..`` of ``metric``."""
    k = out.shape[1]
    Engine._update(metric, out.permute(1, 2, 0).flatten(0, 1), b, k, slice(first, first + k), intact)


def _through_graph(engine, groups, vals, front, down, start, z, a, w, metric, b, intact) -> None:
    """The later layers for many pairs per pass: pre-activations ``z - a_i w_i - a_j w_j``."""
    batch, n = z.shape
    k_max = max(1, min(64, engine.budget // max(1, 4 * batch * n)))
    rest = [f for f in front if f is not start]
    for i, first, js in groups:
        zi = torch.addr(z, a[:, i], w[:, i], alpha=-1)  # (batch, n)
        for q in range(0, len(js), k_max):
            part = torch.as_tensor(js[q : q + k_max], dtype=torch.long)
            k = len(part)
            value = zi.unsqueeze(0) - a[:, part].T.unsqueeze(2) * w[:, part].T.unsqueeze(1)  # (k, batch, n)
            env = engine.plan.expand(vals, rest, k, batch)
            env[start] = value.flatten(0, 1)
            engine.plan.run(env, down)
            out = env[engine.plan.output]
            engine.examples += k * batch
            engine.computed += k * batch
            Engine._update(metric, out, b, k, slice(first + q, first + q + k), intact)


def _groups(pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int, list[int]]]:
    """(first unit, position of its first pair, partners) for runs of pairs sharing their first unit."""
    out: list[tuple[int, int, list[int]]] = []
    for p, (i, j) in enumerate(pairs):
        if out and out[-1][0] == i and out[-1][1] + len(out[-1][2]) == p:
            out[-1][2].append(int(j))
        else:
            out.append((int(i), p, [int(j)]))
    return out


__all__ = ["pair_units"]
