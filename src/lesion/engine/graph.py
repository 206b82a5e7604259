"""A traced model as a graph that can be run from any node onward, on cached inputs.

``Plan`` traces a model with ``torch.fx`` once. For a lesion at a site it knows which nodes are
downstream (must be recomputed) and which earlier values they read (the frontier, cached once per batch
of examples), so the layers before a lesion run once however many lesions follow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.node import map_arg
from torch.nn.modules import module as _hooks

# modules that are the identity in eval mode: a lesion's effect passes through them unchanged
PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


class Unsupported(Exception):
    """The fast engine cannot handle this model or site; callers fall back to the reference path."""


@dataclass(frozen=True)
class Consumer:
    """A linear layer that reads a site's output directly: deleting unit j subtracts its contribution."""

    node: fx.Node
    module: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d

    def lesioned(
        self, z: torch.Tensor, delta: torch.Tensor, units: torch.Tensor, *, inplace: bool = False
    ) -> torch.Tensor:
        """The consumer's output with each unit of ``units`` alone changed by ``-delta``.

        ``z``: intact output (batch, out, ...); ``delta``: (batch, k, ...) the part of each unit's
        activity that the lesion removes; ``units``: (k,) indices. Returns (k * batch, out, ...),
        lesion-major, contiguous: the output under each of the k lesions. ``inplace`` (k = 1 only)
        updates ``z`` itself, saving an allocation per step of a cumulative sweep.
        """
        w = self.module.weight.to(z.dtype)  # bf16 under autocast
        delta = delta.to(z.dtype)
        k, batch = len(units), z.shape[0]
        if isinstance(self.module, nn.Linear) and k == 1:  # z - delta w_j^T: a BLAS rank-1 update
            d, wj = delta[:, 0].contiguous(), w[:, units[0]].contiguous()  # strided vectors are 10x slower
            return z.addr_(d, wj, alpha=-1) if inplace else torch.addr(z, d, wj, alpha=-1)
        if isinstance(self.module, nn.Linear):  # z (batch, out), delta (batch, k): one fused kernel
            wk = w[:, units].T.contiguous().unsqueeze(1)  # (k, 1, out)
            dk = delta.T.contiguous().unsqueeze(2)  # (k, batch, 1)
            # one pass writing the k outputs (baddbmm on an expanded z first copies z k times: 7x slower)
            return torch.addcmul(z.unsqueeze(0), dk, wk, value=-1).flatten(0, 1)
        m = self.module
        wk = w[:, units].transpose(0, 1).reshape(k * w.shape[0], 1, *w.shape[2:])  # (k*out, 1, ...)
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[delta.ndim - 2]
        c = conv(delta, wk, None, m.stride, m.padding, m.dilation, groups=k)  # (batch, k*out, ...)
        c = c.reshape(batch, k, *z.shape[1:]).transpose(0, 1)  # (k, batch, out, ...)
        out = torch.empty((k, *z.shape), dtype=z.dtype, device=z.device)
        if inplace and k == 1:
            return z.sub_(c[0])
        torch.sub(z.unsqueeze(0), c, out=out)
        return out.flatten(0, 1)


class Plan:
    """The traced graph of a model with the site nodes, consumers and dependency sets it needs."""

    skinny = True  # run a Linear with few outputs on many CPU rows as W @ x^T (see ``_skinny``)

    def __init__(self, model: nn.Module, site_names: Iterable[str]):
        try:
            self.gm = fx.symbolic_trace(model)
        except Exception as exc:  # dynamic control flow, unsupported ops, ...
            raise Unsupported(f"model cannot be traced with torch.fx: {exc}") from exc
        self.nodes = list(self.gm.graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        self.modules = dict(self.gm.named_modules())
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise Unsupported(f"model takes {len(placeholders)} inputs; the engine handles one")
        self.input = placeholders[0]
        self.output = next(n for n in self.nodes if n.op == "output")
        self.site = {}
        for name in site_names:
            found = [n for n in self.nodes if n.op == "call_module" and n.target == name]
            if len(found) != 1:
                raise Unsupported(f"site {name!r} appears {len(found)} times in the traced graph")
            self.site[name] = found[0]
        self._down: dict[fx.Node, list[fx.Node]] = {}
        self.batched = set(self.downstream(self.input)) | {self.input}

    # one multiply-add against one element read and written, for ``gather_share`` (a 2-core CPU: ~50 G
    # multiply-adds/s in a GEMM, ~1.2 G elements/s in an elementwise pass)
    MAC = 0.025

    def gather_share(self, env: dict, start: fx.Node, *, scatter: bool) -> float:
        """The largest share of a batch's rows at which recomputing only those rows below ``start``
        (gathered, then scattered back) is cheaper than recomputing every row; 0.0 where it never is.

        Per row, the dense way costs the later layers (``down``: each later value's elements, plus
        ``MAC`` per multiply-add of a later Linear or Conv); the gathered way costs ``down`` for the chosen
        rows only, plus moving rows (``moved``): ``start``'s value gathered (and, with ``scatter``,
        updated and scattered back, with every later value), the batched values it reads gathered, and
        the output scattered. It pays below down / (down + moved). ``env`` holds the later values (their
        shapes are read; a value without the batch axis counts nothing)."""
        z = env.get(start)
        if not isinstance(z, torch.Tensor) or z.ndim == 0 or len(z) == 0:
            return 0.0
        rows = len(z)
        per = z.numel() / rows
        down, moved = 0.0, (3 * per if scatter else per)
        for d in self.downstream(start):
            v = env.get(d)
            if not isinstance(v, torch.Tensor) or v.ndim == 0 or len(v) != rows:
                continue
            n = v.numel() / rows
            if d.op == "output":
                moved += n
                continue
            down += n
            moved += n if scatter else 0.0
            mod = self.modules.get(d.target) if d.op == "call_module" else None
            if isinstance(mod, nn.Linear):
                down += self.MAC * n * mod.in_features
            elif isinstance(mod, nn.modules.conv._ConvNd):
                down += self.MAC * n * mod.weight[0].numel()
        for f in self.frontier([start]):
            v = env.get(f)
            if (
                f is not start
                and f in self.batched
                and isinstance(v, torch.Tensor)
                and v.ndim
                and len(v) == rows
            ):
                moved += v.numel() / rows
        return down / (down + moved) if down > 0 else 0.0

    def downstream(self, node: fx.Node) -> list[fx.Node]:
        """Every node that depends on ``node`` (not itself), in execution order."""
        if node not in self._down:
            seen: set[fx.Node] = set()
            stack = list(node.users)
            while stack:
                n = stack.pop()
                if n not in seen:
                    seen.add(n)
                    stack.extend(n.users)
            self._down[node] = sorted(seen, key=self.pos.__getitem__)
        return self._down[node]

    def frontier(self, starts: Iterable[fx.Node]) -> list[fx.Node]:
        """Values read by the nodes downstream of ``starts`` that are not themselves recomputed."""
        starts = set(starts)
        down = set().union(*(self.downstream(s) for s in starts))
        need = set()
        for n in down:
            for a in n.all_input_nodes:
                if a not in down and a not in starts:
                    need.add(a)
        return sorted(need | starts, key=self.pos.__getitem__)

    def expand(self, values: dict, front: Iterable[fx.Node], k: int, batch: int) -> dict:
        """The values of ``front`` for ``k`` lesions at once: every batched tensor repeated ``k`` times
        along its batch axis (lesion-major), everything else shared. Raises ``Unsupported`` for a batched
        value that is not a tensor with a batch axis of ``batch`` (a shape read from the input, say)."""
        return {
            f: self._batched(f, values[f], batch, lambda v: v.repeat(k, *[1] * (v.ndim - 1))) for f in front
        }

    def take(self, values: dict, front: Iterable[fx.Node], rows: torch.Tensor, batch: int) -> dict:
        """The values of ``front`` at the examples ``rows`` (indices into a batch of ``batch``): every
        batched tensor indexed along its batch axis, everything else shared; raises like ``expand``."""
        return {
            f: self._batched(f, values[f], batch, lambda v: v.index_select(0, rows.to(v.device)))
            for f in front
        }

    def _batched(self, f: fx.Node, v, batch: int, fn: Callable):
        """``fn(v)`` for a batched node's value (a tensor with a batch axis of ``batch``), else ``v``."""
        if f not in self.batched:
            return v
        if not isinstance(v, torch.Tensor) or v.ndim == 0 or v.shape[0] != batch:
            raise Unsupported(f"node {f.name} carries batch-dependent non-tensor data")
        return fn(v)

    def consumer(self, site: str, flat: bool) -> Consumer | None:
        """The Linear/Conv that alone reads the site's output (through eval-mode identities), if any.

        ``flat``: the site's output is (batch, units), so a Linear consumer reads the units directly.
        """
        found = self.reader(self.site[site])
        if found is None:
            return None
        user = found[1]
        if user.op != "call_module" or len(user.all_input_nodes) != 1:
            return None
        mod = self.modules[user.target]
        if isinstance(mod, nn.Linear) and flat:
            return Consumer(user, mod)
        if (
            isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Conv3d)
            and not flat
            and mod.groups == 1
            and mod.padding_mode == "zeros"
            and not isinstance(mod.padding, str)
        ):
            return Consumer(user, mod)
        return None

    def reader(self, node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
        """(the value it reads, the only reader) of ``node``'s value past eval-mode identities (Dropout,
        Identity modules called on that value alone; the engine runs the model in eval mode); None where
        a value on the way has no reader or several."""
        while len(node.users) == 1:
            (user,) = node.users
            passes = user.op == "call_module" and isinstance(self.modules[user.target], PASS_THROUGH)
            if not (passes and user.args == (node,) and not user.kwargs):
                return node, user
            node = user
        return None

    def run(
        self,
        env: dict[fx.Node, object],
        nodes: Iterable[fx.Node],
        edits: dict[fx.Node, Callable] | None = None,
        raw: dict[fx.Node, torch.Tensor] | None = None,
        calls: dict[fx.Node, Callable] | None = None,
    ) -> None:
        """Evaluate ``nodes`` in order into ``env``, reading inputs from ``env``.

        ``edits`` maps a node to a function applied to its output (a lesion at a site); the unedited
        output goes to ``raw`` when given. ``calls`` maps a node to a function of its inputs that
        computes it instead of its module (a consumer with a lesion folded into its weights).
        """
        edits = edits or {}
        for n in nodes:
            if n.op == "output":
                env[n] = map_arg(n.args[0], env.__getitem__)
                continue
            if calls and n in calls:
                value = calls[n](*map_arg(n.args, env.__getitem__))
            else:
                value = self._eval(n, env)
            if n in edits:
                if raw is not None:
                    raw[n] = value
                value = edits[n](value)
            env[n] = value

    def _eval(self, n: fx.Node, env):
        args = map_arg(n.args, env.__getitem__)
        kwargs = map_arg(n.kwargs, env.__getitem__)
        if n.op == "call_module":
            mod = self.modules[n.target]
            if not kwargs and len(args) == 1 and plain_linear(mod):
                return self.linear(mod, args[0], mod.weight, mod.bias)
            return mod(*args, **kwargs)
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        if n.op == "get_attr":
            obj = self.gm
            for part in n.target.split("."):
                obj = getattr(obj, part)
            return obj
        raise Unsupported(f"cannot evaluate node {n.name} of kind {n.op}")

    def linear(self, mod: nn.Linear, x, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """``F.linear(x, w, b)`` for the plain Linear ``mod`` (its own weights, or ones with a lesion
        folded in), on the transposed path where ``_skinny`` picks it."""
        if self.skinny and _skinny(mod, x):
            return _transposed_linear(x, w, b)
        return F.linear(x, w, b)

    def run_until(self, x: torch.Tensor, keep: Iterable[fx.Node], edits=None, raw=None, calls=None) -> dict:
        """Run the graph on ``x`` far enough to know every node in ``keep``; return those values."""
        keep = set(keep)
        last = max(self.pos[n] for n in keep)
        env: dict[fx.Node, object] = {self.input: x}
        nodes = self.nodes[1 : last + 1] if self.nodes[0] is self.input else self.nodes[: last + 1]
        last_use = _last_use(nodes, self.pos)
        for n in nodes:
            if n is self.input:
                continue
            self.run(env, [n], edits, raw, calls)
            for a in n.all_input_nodes:  # free what no later prefix node or caller needs
                if a not in keep and last_use.get(a, -1) <= self.pos[n] and a is not self.input:
                    env.pop(a, None)
        return {n: env[n] for n in keep if n in env} | ({self.input: x} if self.input in keep else {})


SKINNY_OUT = 16  # most outputs of a Linear run transposed
SKINNY_ROWS = 512  # most rows per thread run transposed


def _skinny(mod, x) -> bool:
    """A plain Linear with at most ``SKINNY_OUT`` outputs on a 2-D CPU batch of 64 to ``SKINNY_ROWS``
    rows per thread, no hooks.

    x @ W^T with W (10, 512) is a GEMM whose output has 10 columns; on few rows the CPU BLAS runs it
    slower than the same product as W @ x^T (10 rows, the batch along the long axis), on many rows faster.
    Measured 2026-12-01 (1,024 x 512 -> 10): an AMD EPYC at 1 thread 345 us against 186 us transposed; a
    Xeon at 2 threads 63 against 47 us at 1,024 rows, 293 against 617 us at 4,096 rows, and at 1 thread
    slower transposed from 1,024 rows on. The last layer of a classifier is that shape and runs once per
    lesion or cumulative step, so the engine computes it transposed where the rows are few (values equal
    up to float rounding; every sweep is still checked against the hooked model on its data).
    """
    return (
        plain_linear(mod)
        and isinstance(x, torch.Tensor)
        and x.ndim == 2
        and x.device.type == "cpu"
        and 64 <= x.shape[0] <= SKINNY_ROWS * torch.get_num_threads()
        and mod.out_features <= SKINNY_OUT
        and x.dtype == mod.weight.dtype
        and not torch.is_autocast_enabled("cpu")
        and not torch.is_grad_enabled()  # inference only: a fit keeps the module's own arithmetic
    )


def _transposed_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    out = torch.mm(w, x.T) if b is None else torch.addmm(b[:, None], w, x.T)
    return out.T.contiguous()  # (batch, out) in the usual layout: later code may view() it


def plain_linear(mod: nn.Module) -> bool:
    """An ``nn.Linear`` itself (no subclass) without hooks: its output is ``F.linear`` of its input."""
    return (
        type(mod) is nn.Linear
        and not (mod._forward_hooks or mod._forward_pre_hooks)
        and not (_hooks._global_forward_hooks or _hooks._global_forward_pre_hooks)
    )


def _last_use(nodes, pos) -> dict:
    out: dict = {}
    for n in nodes:
        for a in n.all_input_nodes:
            out[a] = max(out.get(a, -1), pos[n])
    return out
