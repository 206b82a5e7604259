"""Pair lesions of one layer (two units deleted together) as rank-2 updates of its consumer.

Where a site is read by a Linear (``W``, pre-activations ``z``), a ReLU and the model's last Linear (the
shape ``lesion.engine.kinks`` serves), deleting units i and j moves ``z`` to
``z - a_i w_i - a_j w_j``: a rank-2 update. Pairs are taken in groups that share their first unit i:
``z_i = z - a_i w_i`` and the output ``out_i = V relu(z_i) + c`` are computed once (exactly: unit i
deleted alone), and every partner j of the group is then a rank-1 update of ``z_i``, served by the kink
shortcut (one GEMM for the mask-held Jacobians plus exact corrections where a pre-activation crosses
zero), or densely where the shortcut declines. Examples on which unit i already holds its replacement
value (a ReLU unit at rest: about half of them) take each partner's single-unit output unchanged, from
one single-unit pass per chunk. Any other traced model after a Linear consumer runs the rank-2
pre-activations of many pairs per pass through its later layers. Values equal the dense computation up
to float rounding; ``lesion.analyses.pairs`` checks every call against the double-hooked model on
a sample of its pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lesion.core.metric import Metric
from lesion.engine.graph import Unsupported
from lesion.engine.sweeps import Engine, _fills


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

    Through a ReLU head: the kink shortcut per first unit; any other model after a Linear consumer: the
    consumer's rank-2 pre-activations run through the traced later layers, many pairs per pass."""
    engine._site(layer)  # a plain (batch, units) site, or Unsupported
    cons = engine.consumers[layer]
    if cons is None or not isinstance(cons.module, nn.Linear):
        raise Unsupported(f"site {layer!r} has no Linear consumer: pairs go through the hooked model")
    head = engine._relu_head(cons, cons.node)
    groups = _groups(pairs)
    node, start = engine.plan.site[layer], cons.node
    front = engine.plan.frontier([start])
    down = engine.plan.downstream(start)
    w = cons.module.weight  # (n, width)
    piece = max(1, engine.budget // 4)
    done = 0
    for b in engine.chunks:
        intact = engine._intact(metric, b.x)
        vals = engine.plan.prefix(b.x, set(front) | {node})
        h, z = vals[node], vals[start]
        if not (isinstance(h, torch.Tensor) and h.ndim == 2 and isinstance(z, torch.Tensor) and z.ndim == 2):
            raise Unsupported(f"site {layer!r}: pairs need (batch, units) activations")
        width = h.shape[1]
        a = h - _fills(h, torch.arange(width), fill).reshape(1, width)  # (batch, width): what each unit adds
        if head is None:
            _through_graph(engine, groups, vals, front, down, start, z, a, w, metric, b, intact)
        else:
            _through_head(engine, head, groups, z, a, w, piece, metric, b, intact)
        done += len(b)
        if progress is not None:
            progress(done)


def _through_head(engine, head, groups, z, a, w, piece, metric, b, intact) -> None:
    singles = _singles(head, z, a, w, piece)  # (width, batch, c): each unit deleted alone
    for i, first, js in groups:
        part = torch.as_tensor(js, dtype=torch.long)
        out = singles[part].clone()  # where unit i adds nothing the pair is its partner alone
        rows = (a[:, i] != 0).nonzero().squeeze(1)
        if len(rows):
            zi = torch.addr(z[rows], a[rows, i], w[:, i], alpha=-1)  # (rows, n): unit i deleted
            got = _partners(head, zi, a[rows][:, part], part, w, piece)
            out[:, rows] = got.view(len(js), len(rows), -1)
        engine.examples += len(js) * len(b)
        engine.computed += len(js) * len(rows)
        Engine._update(metric, out.flatten(0, 1), b, len(js), slice(first, first + len(js)), intact)


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


def _partners(head, zi, a, part, w, piece) -> torch.Tensor:
    """(k * rows, c): the output with each partner of ``part`` deleted on top of the base ``zi``."""
    out_i = head.head(F.relu(zi))  # (rows, c)
    got = head.lesions(zi, out_i, a, part, piece=piece)
    if got is not None:
        return got[0]
    moved = zi.unsqueeze(0) - a.T.unsqueeze(2) * w[:, part].T.unsqueeze(1)  # (k, rows, n): the dense step
    return head.head(F.relu(moved)).flatten(0, 1)


def _singles(head, z, a, w, piece) -> torch.Tensor:
    """(width, batch, c): the output with each unit of the site deleted alone."""
    units = torch.arange(a.shape[1])
    return _partners(head, z, a, units, w, piece).view(len(units), len(z), -1)


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
