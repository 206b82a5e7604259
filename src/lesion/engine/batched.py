"""Many lesions per forward pass: single-unit sweeps on a traced model (cumulative curves: ``curves``).

- The layers before a site run once per chunk of examples; the later layers run on a batch expanded
  with one copy per lesion (``K`` lesions per pass).
- Exact shortcut: where a Linear or Conv alone reads the site, deleting unit j changes that layer's
  output by the contribution of unit j alone (a rank-1 / single-channel update); the consumer is never
  recomputed.
- Exact sparsity: a unit already at its replacement for every example of a chunk (dead) costs
  nothing; a block of lesions changing few examples runs the later layers on those examples only, where
  ``Plan.gather_share`` says that pays.
- Metric updates in blocks of up to 64 lesions (``_Pending``), shared with ``curves``.
Results equal one full forward pass per lesion up to float rounding; every sweep checks that on its own
data before it is trusted (``lesion.engine.dispatch``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from lesion.core.batch import Batch, output_tensor
from lesion.core.metric import Metric
from lesion.core.sites import Site
from lesion.engine.graph import Plan, Unsupported
from lesion.engine.kinks import relu_head


class Engine:
    """Fast evaluation of many lesions of ``model`` over batches streamed from ``chunks()``."""

    # sparse: gather the changed examples of every block (True), or only where the block's share of
    # changed (lesion, example) pairs is below ``Plan.gather_share``'s break-even (False, the default);
    # always on, W1 was slower (2026-11-30: 5.1-5.7 s against 4.2-4.6 s). side_by_side: off, timed slower
    # (W2 78.8 s against 62.7 s: any order's layer-1 step re-runs the later layers for all)
    sparse = False
    side_by_side = False
    # kinks_on: single-unit lesions before a ReLU and a narrow last Linear as Jacobians plus kink
    # corrections (``lesion.engine.kinks``), up to HEAD_LESIONS at a time and HEAD_BYTES of outputs
    # (2026-12-02, EPYC, W1's first layer per chunk of 1,024: 128 at a time 163-216 ms, 256 155-186 ms,
    # 512 135-152 ms)
    kinks_on = True
    # head_curves: cumulative orders over a site before a ReLU and a narrow last Linear (and that ReLU's
    # output) on the lean step loop of ``lesion.engine.headcurve`` (2026-12-02, EPYC, one W2 order on
    # 10,000 examples: 3.4-3.6 s against 4.9-6.5 s through the graph); False: through the graph
    head_curves = True
    HEAD_LESIONS = 512
    HEAD_BYTES = 32 << 20

    def __init__(
        self,
        model: nn.Module,
        chunks: Callable[[], Iterable[Batch]],
        sites: Sequence[Site],
        *,
        chunk_size: int = 1024,
        budget_bytes: int = 8 << 20,
    ):
        self.model = model
        self.sites = {s.name: s for s in sites}
        self.plan = Plan(model, self.sites)
        self._batches = chunks
        self.chunk_size = chunk_size
        self.budget = budget_bytes
        self.consumers = {
            s.name: self.plan.consumer(s.name, flat=len(s.shape) == 1) for s in sites if _plain(s)
        }
        # (lesion, example) pairs seen, those recomputed, and those the lesion left unchanged (the unit
        # already held its replacement: exact sparsity could skip them; cumulative steps where every
        # example is unchanged are skipped)
        self.examples = self.computed = self.unchanged = 0
        # kinks corrected by the ReLU-head shortcut, and blocks it declined (dense step instead)
        self.kinks = self.declined = 0

    @property
    def chunks(self) -> Iterator[Batch]:
        """Stream the data in small chunks: expanded temporaries stay in cache and memory stays bounded."""
        for b in self._batches():
            try:
                b.x  # noqa: B018 -- one tensor input, or the engine steps aside
            except Exception as exc:
                raise Unsupported("the engine handles models with one tensor input") from exc
            for i in range(0, len(b), self.chunk_size):
                yield b.slice(i, i + self.chunk_size)

    def _intact(self, metric: Metric, x: torch.Tensor):
        return output_tensor(self.model(x)) if metric.needs_intact else None

    @staticmethod
    def _update(metric: Metric, out, b: Batch, k: int, lesions: slice, intact) -> None:
        if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != k * len(b):
            raise Unsupported("the model's output is not one tensor with a batch axis after expansion")
        metric.update(out.reshape(k, len(b), *out.shape[1:]), b, lesions, intact=intact)

    def _site(self, layer: str) -> Site:
        site = self.sites[layer]
        if not _plain(site):
            raise Unsupported(
                f"site {layer!r} is a view or a sequence site; the engine handles units on axis 1"
            )
        return site

    # ---------------------------------------------------------------------------- single units
    def single_units(
        self,
        layer: str,
        units: Sequence[int],
        fill: torch.Tensor | None,
        metric: Metric,
        offset: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Update ``metric`` (lesions ``offset ..``) with each unit of ``units`` alone clamped to ``fill``
        ((width,) values; None: zero). ``progress`` is called with the examples done after each chunk
        (every lesion runs on a chunk before the next chunk is read: the layers before the site run once)."""
        site = self._site(layer)
        node = self.plan.site[layer]
        cons = self.consumers[layer]
        start = cons.node if cons else node
        front = self.plan.frontier([start])
        down = self.plan.downstream(start)
        units_t = torch.as_tensor(list(units), dtype=torch.long)
        shares: dict = {}
        head = self._relu_head(cons, start)
        done = 0
        for b in self.chunks:
            x, y = b.x, b.ids
            intact = self._intact(metric, x)
            vals = self.plan.run_until(x, set(front) | {node})
            h = vals[node]
            if not isinstance(h, torch.Tensor):
                raise Unsupported(f"site {layer!r} did not produce a tensor in the traced graph")
            per_lesion = vals[start][0].numel() if isinstance(vals[start], torch.Tensor) else 1
            k_max = max(1, min(64, self.budget // max(1, 4 * len(y) * per_lesion)))
            pending = _Pending(self, metric, b, intact)
            # the intact output, for the examples a lesion leaves unchanged (exact sparsity)
            whole = None
            step = k_max
            if head is not None:
                whole = self._whole(intact, vals, front, down)
                outs = len(y) * max(1, head.head.out_features) * 4
                step = max(1, min(self.HEAD_LESIONS, len(units_t), max(16, self.HEAD_BYTES // outs)))
            for i in range(0, len(units_t), step):
                js = units_t[i : i + step]
                if head is not None and h.ndim == 2:
                    a = h[:, js.to(h.device)] - _fills(h, js, fill)  # (batch, k): what each unit adds now
                    touched = (a != 0).T
                    live = touched.any(1)  # dead units keep the intact output, as on the dense path
                    got = (
                        self._kinked(head, vals[start], whole, a[:, live.to(a.device)], js[live])
                        if live.any()
                        else None
                    )
                    if got is not None or not live.any():
                        self.examples += touched.numel()
                        self.unchanged += int(touched.numel() - touched.sum())
                        self.computed += int(touched[live].numel())  # all live pairs: one GEMM
                        pending.add(_scatter_live(got, whole, live), offset + i, len(js), copy=False)
                        continue
                for q in range(0, len(js), k_max):
                    part = js[q : q + k_max]
                    touched = self._touched(h, site, part, fill)  # (k, batch): the lesion changes the example
                    self.examples += touched.numel()
                    self.unchanged += int(touched.numel() - touched.sum())
                    live = touched.any(1)  # a dead unit (no example changed) costs nothing
                    dead = not bool(live.all())
                    share = 1.0 if self.sparse else shares.get(start)  # None until a dense block ran
                    sparse = (
                        share is not None and float(touched.float().mean()) <= share and not touched.all()
                    )
                    if (dead or sparse) and whole is None:
                        whole = self._whole(intact, vals, front, down)
                    if sparse:
                        value = self._lesioned_start(h, vals, site, cons, start, part, fill)
                        out = self._sparse(vals, front, start, value, touched, whole, down)
                    elif dead:
                        out = self._dead(h, vals, site, cons, start, part, live, fill, front, whole, down)
                        self.computed += int(touched[live].numel())
                    else:
                        env = self._later(h, vals, site, cons, start, part, fill, front, down, len(y))
                        out = _tensor_out(env[self.plan.output])
                        self.computed += touched.numel()
                        if start not in shares:  # where gathering the changed examples starts to pay
                            shares[start] = self.plan.gather_share(env, start, scatter=False)
                    pending.add(out, offset + i + q, len(part), copy=False)
            pending.drain()
            done += len(y)
            if progress is not None:
                progress(done)

    def _relu_head(self, cons, start):
        """The ReLU-and-narrow-last-Linear shortcut after ``start`` (``lesion.engine.kinks``), where it
        applies: a Linear consumer, float32/64 weights, no autocast."""
        if not self.kinks_on or cons is None or not isinstance(cons.module, nn.Linear):
            return None
        if cons.module.weight.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled(
            cons.module.weight.device.type
        ):
            return None
        return relu_head(self.plan, start)

    def _kinked(self, head, z, whole, a, js) -> torch.Tensor | None:
        """The output under each lesion of ``js`` (``a``: what each unit adds now, (batch, k)) by the kink
        shortcut, or None where it declines."""
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or whole.ndim != 2:
            return None
        got = head.lesions(z, whole.to(z.dtype), a.to(z.dtype), js, piece=max(1, self.budget // 4))
        if got is None:
            self.declined += 1
            return None
        self.kinks += got[1]
        return got[0]

    def _whole(self, intact, vals, front, down) -> torch.Tensor:
        """The intact output: the metric's own, or the later layers (no lesion) run from ``front``."""
        if intact is not None:
            return intact
        env = {f: vals[f] for f in front}
        self.plan.run(env, down)
        return _tensor_out(env[self.plan.output])

    @staticmethod
    def _touched(h: torch.Tensor, site: Site, js: torch.Tensor, fill: torch.Tensor | None) -> torch.Tensor:
        """(k, batch): whether deleting unit js[l] changes example e at all (its activity is not already
        the replacement value everywhere)."""
        cur = h.index_select(site.unit_dim, js.to(h.device)).movedim(site.unit_dim, 0)  # (k, batch, ...)
        fills = _fills(h, js, fill)
        diff = cur != fills.reshape(-1, *[1] * (cur.ndim - 1))
        return diff.reshape(*diff.shape[:2], -1).any(2)

    def _sparse(self, vals, front, start, value, touched, whole, down) -> torch.Tensor:
        """Run the later layers only for the (lesion, example) pairs a lesion changes; every other pair
        keeps the intact output, which is exactly what the full computation gives it."""
        k, batch = touched.shape
        rows = touched.flatten().nonzero().squeeze(1)  # lesion-major indices into k * batch
        self.computed += len(rows)
        out = whole.repeat(k, *[1] * (whole.ndim - 1))
        if len(rows) == 0:
            return out
        env = self.plan.take(vals, [f for f in front if f is not start], rows % batch, batch)
        env[start] = value[rows.to(value.device)]
        self.plan.run(env, down)
        out[rows.to(out.device)] = _tensor_out(env[self.plan.output]).to(out.dtype)
        return out

    def _dead(self, h, vals, site, cons, start, js, live, fill, front, whole, down) -> torch.Tensor:
        """The later layers for the live lesions of ``js`` only; a dead unit's lesion (the unit already
        holds its replacement for every example) keeps the intact output, which is what the full pass
        gives it."""
        got = None
        if bool(live.any()):
            env = self._later(h, vals, site, cons, start, js[live], fill, front, down, len(whole))
            got = _tensor_out(env[self.plan.output])
        return _scatter_live(got, whole, live)

    def _later(self, h, vals, site, cons, start, js, fill, front, down, batch: int) -> dict:
        """The values of the later layers with each unit of ``js`` deleted (``len(js) x batch`` rows)."""
        value = self._lesioned_start(h, vals, site, cons, start, js, fill)
        env = self._expand(vals, front, start, value, len(js), batch)
        self.plan.run(env, down)
        return env

    def _lesioned_start(self, h, vals, site, cons, start, js, fill) -> torch.Tensor:
        k = len(js)
        fills = _fills(h, js, fill)
        if cons is not None:
            shape = [1, k] + [1] * (h.ndim - 2)
            delta = h[:, js] - fills.reshape(shape)  # (batch, k, ...): what each unit adds now
            return cons.lesioned(vals[start], delta, js.to(h.device))
        dim = site.unit_dim
        hk = h.unsqueeze(0).repeat(k, *[1] * h.ndim)  # (k, batch, ...)
        hm = hk.movedim(dim + 1, 2)  # (k, batch, units, ...) view
        hm[torch.arange(k), :, js] = fills.reshape(k, *[1] * (h.ndim - 1)).expand(
            k, *hm.shape[1:2], *hm.shape[3:]
        )
        return hk.flatten(0, 1)

    def _expand(self, vals, front, start, value, k: int, batch: int) -> dict:
        env = self.plan.expand(vals, [f for f in front if f is not start], k, batch)
        env[start] = value
        return env


class _Pending:
    """Outputs of consecutive lesions, kept aside and scored together: one metric update per block of
    lesions instead of one per forward pass or cumulative point (on a small model the metric's checks and
    reductions cost more than an incremental step itself). The values per lesion are the same."""

    block = 64  # most lesions per update; the engine's budget_bytes bounds the kept outputs too

    def __init__(self, engine: Engine, metric: Metric, b: Batch, intact):
        self.engine, self.metric, self.b, self.intact = engine, metric, b, intact
        self.outs: list[torch.Tensor] = []
        self.first = self.k = self.bytes = 0

    def add(self, out, start: int, k: int, copy: bool) -> None:
        """Keep ``out`` ((k * batch, ...), lesions ``start .. start + k``); ``copy`` where the sweep
        will update the tensor in place."""
        if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != k * len(self.b):
            self.engine._update(self.metric, out, self.b, k, slice(start, start + k), self.intact)  # raises
        if self.outs and (
            start != self.first + self.k
            or out.shape[1:] != self.outs[0].shape[1:]
            or out.dtype != self.outs[0].dtype
        ):
            self.drain()
        if not self.outs:
            self.first = start
        self.outs.append(out.clone() if copy else out)
        self.k += k
        self.bytes += out.numel() * out.element_size()
        if self.k >= self.block or self.bytes >= self.engine.budget:
            self.drain()

    def drain(self) -> None:
        if not self.outs:
            return
        out = self.outs[0] if len(self.outs) == 1 else torch.cat(self.outs)
        self.engine._update(
            self.metric, out, self.b, self.k, slice(self.first, self.first + self.k), self.intact
        )
        self.outs, self.k, self.bytes = [], 0, 0


def _fills(h: torch.Tensor, js: torch.Tensor, fill: torch.Tensor | None) -> torch.Tensor:
    """(k,) replacement values of the units ``js`` (``fill``: (width,) values; None: zero), like ``h``."""
    return torch.zeros(len(js), dtype=h.dtype, device=h.device) if fill is None else fill[js].to(h)


def _scatter_live(got: torch.Tensor | None, whole: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """(k * batch, ...) outputs of k lesions: ``got`` for the live ones (in order), ``whole`` (the intact
    output) for the dead ones."""
    k, batch = len(live), len(whole)
    if got is not None and bool(live.all()):
        return got
    out = whole.repeat(k, *[1] * (whole.ndim - 1))
    if got is not None:
        out.unflatten(0, (k, batch))[live.to(out.device)] = got.to(out.dtype).unflatten(0, (-1, batch))
    return out


def _plain(s: Site) -> bool:
    return s.group == 1 and s.hook == "output" and s.unit_dim == 1


def _tensor_out(out):
    try:
        return output_tensor(out)
    except Exception as exc:
        raise Unsupported(f"cannot read the traced graph's output: {exc}") from exc


def engine_of(runner):
    """The fast engine for the runner's model and data (made once, kept on the runner), or None where it
    cannot be used (the reason is kept in ``runner.fallbacks["*"]``)."""
    if runner.use_engine and runner._engine is None and "*" not in runner.fallbacks:
        try:
            runner._engine = Engine(runner.model, runner.batches, list(runner.sites.values()))
        except Unsupported as exc:
            runner.fallbacks["*"] = str(exc)
    return runner._engine
