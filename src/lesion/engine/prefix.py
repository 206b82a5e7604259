"""The module-prefix engine: many lesions per pass on any model whose modules run in a fixed order.

Transformers from Hugging Face rarely trace with ``torch.fx``, so this engine uses the model's own
forward code instead of a graph. One intact pass per batch records the outputs of every module that
*finishes before* the lesioned site starts (the embeddings, the earlier blocks, and inside the site's
own block e.g. the attention and the MLP's input projection). Their outputs cannot depend on the
lesion, so during the lesioned pass those modules are stubbed: they return the recorded output,
repeated once per lesion, without computing. The model's own glue (residual adds, masks, rotary
position tables) runs as written on a batch of ``k x batch`` examples, chunk ``i`` carrying lesion
``i``, and every later module runs for real. For a single MLP neuron whose activation feeds the MLP's
output projection directly, that projection is replaced by the exact rank-1 update of its intact
output, ``(new_j - a_j) * W_out[:, j]`` at every position.

Which outputs carry the batch axis is learnt, not guessed: a second intact pass on one example tells a
batched output (its first axis follows the batch) from a shared one (rotary tables, masks). Every use
is checked against the hook path on the sweep's own data by the caller (``lesion.engine.dispatch``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from lesion.core.batch import Batch, output_tensor
from lesion.core.lesions import Applied, Lesion, replace_units
from lesion.core.metric import Metric
from lesion.core.runner import check_examples
from lesion.core.sites import Site, hook_site
from lesion.engine.graph import Unsupported
from lesion.engine.kernels import lean_forwards
from lesion.engine.prefixstubs import (
    _forwards,
    _leaves,
    _rebuild,
    _recorded,
    _single_constant,
    _versions,
    attention_of,
    head_output,
    stub_fits,
)

# the largest output of one lesioned pass (k x batch x ... floats). Measured 2026-12-01 (2-core Xeon, 2
# threads, the bench's GPT-2 on 64 x 128 tokens, 32 MB of logits per lesion): every head alone in 9.8 s
# at one lesion per pass (32 MB) against 14.4 s at eight (256 MB), 256 neurons 36.6 s against 44.0 s - the
# k-fold MLP temporaries fall out of cache; small models still pass many lesions at once.
MAX_PASS_BYTES = 32 << 20
# ... and of its activations: each lesion's copy of the widest recorded tensor, times EXPANSION (an MLP
# widens the residual stream 4x), at most MAX_ACT_BYTES a pass. A classifier's output is small, so the
# output alone let a ViT on 1,000 images take 800 lesions a pass (6.9 GB peak for a 264-unit atlas).
MAX_ACT_BYTES, EXPANSION = 256 << 20, 4
# heads deleted in closed form through the attention's output projection (``lesion.engine.prefixstubs``;
# W6 at 16 x 128 tokens, 1 thread, alternately: see docs/engine.md); False: the attention re-runs
HEAD_STUB = True


@dataclass
class _Call:
    start: int
    end: int
    calls: int


class PrefixEngine:
    """Evaluate many lesions per forward pass by stubbing the modules that finish before their site."""

    def __init__(self, model: nn.Module, chunks: Callable[[], Iterable[Batch]], sites: Sequence[Site]):
        self.model = model
        self.sites = {s.name: s for s in sites}
        self._batches = chunks
        self.named = dict(model.named_modules())
        self.order: dict[str, _Call] | None = None
        self.batched: dict[str, list[bool]] = {}  # per stubbed module: which output leaves carry the batch
        self.checked = 0  # examples of the spread subsets the last evaluate scored for a check
        self.last_error = ""  # why the last pass the caller tried could not run (set by the caller)
        self.lean = lean_forwards(model)  # activations its passes run in a lean form (engine.kernels)

    # ------------------------------------------------------------------------------------------ planning
    def _record_order(self, batch: Batch) -> dict[str, _Call]:
        counter = [0]
        calls: dict[str, _Call] = {}
        handles = []

        def pre(name):
            def fn(_m, _args):
                c = calls.setdefault(name, _Call(counter[0], -1, 0))
                c.calls += 1
                counter[0] += 1

            return fn

        def post(name):
            def fn(_m, _args, _out):
                calls[name].end = counter[0]
                counter[0] += 1

            return fn

        for name, m in self.named.items():
            if name:
                handles.append(m.register_forward_pre_hook(pre(name)))
                handles.append(m.register_forward_hook(post(name)))
        try:
            batch.run(self.model)
        finally:
            for h in handles:
                h.remove()
        return calls

    def stubs(self, site: Site) -> list[str]:
        """The maximal modules that finish before ``site``'s module starts, each called once."""
        assert self.order is not None
        if site.target not in self.order or self.order[site.target].calls != 1:
            raise Unsupported(f"site {site.name!r}: its module does not run exactly once per pass")
        start = self.order[site.target].start
        done = sorted(
            (n for n, c in self.order.items() if c.calls == 1 and c.end < start), key=lambda n: n.count(".")
        )
        chosen: list[str] = []
        for n in done:
            if not any(n.startswith(p + ".") for p in chosen):
                chosen.append(n)
        return chosen

    def rank1(self, site: Site) -> str | None:
        """The output projection fed directly by ``site`` (a Linear or GPT-2 Conv1D), or None."""
        return self._rank1.get(site.name)

    def _ordered(self, batch: Batch) -> None:
        if self.order is None:  # planned on two examples: the call order does not depend on the batch size
            small = batch.slice(0, 2)
            self.order = self._record_order(small)
            self._rank1 = self._find_rank1(small, list(self.sites.values()))
            self._heads = {
                s.name: a for s in self.sites.values() if (a := attention_of(self.named, self.order, s))
            }

    def share(self, sites: Sequence[Site], budget: int) -> list[list[str]]:
        """``sites`` (in model order) in runs that can share their passes: the outputs recorded for a
        run (every stub of its sites and their rank-1 projections' input and output, for one batch)
        stay under ``budget`` bytes, sized on a one-example pass; a site over it alone forms a run."""
        batch = next(iter(self._batches()))
        self._ordered(batch)
        own = {s.name: set(self.stubs(s)) | ({p} if (p := self.rank1(s)) else set()) for s in sites}
        names = set().union(*own.values())
        proj = {p for s in sites if (p := self.rank1(s)) is not None}
        probe = self._capture(batch.slice(0, 1), names - proj, sorted(proj))
        size = {n: len(batch) * sum(x.numel() * x.element_size() for x in _leaves(probe[n])
                                    if isinstance(x, torch.Tensor)) for n in names}  # fmt: skip
        runs: list[list[str]] = []
        held: set[str] = set()
        for s in sites:
            if runs and sum(size[n] for n in held | own[s.name]) <= budget:
                runs[-1].append(s.name)
                held |= own[s.name]
            else:
                runs.append([s.name])
                held = set(own[s.name])
        return runs

    def _plan(self, batch: Batch, sites: Sequence[Site]) -> None:
        self._ordered(batch)
        names = {n for s in sites for n in self.stubs(s)} - set(self.batched)
        if not names:
            return
        # two examples against one (not the whole batch: a full pass here would cost as much as a lesion)
        two = batch.slice(0, 2)
        full, probe = self._capture(two, names), self._capture(batch.slice(0, 1), names)
        for n in names:
            a, b = _leaves(full[n]), _leaves(probe[n])
            # a batch of one cannot tell batched from shared: then every leading axis of 1 is repeated
            self.batched[n] = [
                isinstance(x, torch.Tensor) and x.ndim > 0 and x.shape[0] == len(two)
                and isinstance(y, torch.Tensor) and y.ndim > 0 and y.shape[0] == 1
                for x, y in zip(a, b, strict=True)
            ]  # fmt: skip

    def _find_rank1(self, batch: Batch, sites: Sequence[Site]) -> dict[str, str]:
        """Sites whose output tensor is itself the input of the next module: a Linear-like projection."""
        seen: dict[str, int] = {}
        inputs: dict[str, int] = {}
        handles = []
        plain = [s for s in sites if s.hook == "output" and s.group == 1 and not s.flat]
        for s in plain:
            handles.append(self.named[s.target].register_forward_hook(
                lambda _m, _a, out, n=s.name: seen.__setitem__(n, id(out))
            ))  # fmt: skip
        for n, m in self.named.items():
            if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D":
                handles.append(m.register_forward_pre_hook(
                    lambda _m, args, n=n: inputs.__setitem__(n, id(args[0])) if args else None
                ))  # fmt: skip
        try:
            with torch.no_grad():
                keep = batch.run(self.model)  # noqa: F841 -- outputs alive: ids stay unique
                found = {}
                for s in plain:
                    after = self.order[s.target].end
                    nxt = [n for n, c in self.order.items() if c.start > after and c.calls == 1]
                    first = min(nxt, key=lambda n: self.order[n].start, default=None)
                    if first is not None and inputs.get(first) == seen.get(s.name):
                        found[s.name] = first
        finally:
            for h in handles:
                h.remove()
        return found

    def _capture(self, batch: Batch, names: Iterable[str], extra: Sequence[str] = ()) -> dict:
        """The recorded outputs of ``names`` (and the (input, output) of each ``extra`` projection) on one
        intact pass. A recorded tensor the model later changes in place (``hidden += residual`` after a
        ResNet block's convolutions) would be replayed with the change in it: such outputs are recorded
        again as copies, in a second pass."""
        names, copied = list(names), set()
        for _ in range(2):
            got, seen = self._record(batch, names, extra, copied)
            changed = {n for n, versions in seen.items() if versions != _versions(got[n])}
            if not changed:
                return got
            copied |= changed
        raise Unsupported(f"the recorded outputs of {sorted(changed)[:3]} change after a copy was taken")

    def _record(self, batch: Batch, names, extra, copied: set) -> tuple[dict, dict]:
        got: dict[str, object] = {}
        seen: dict[str, list[int] | None] = {}

        def keep(n, out):
            if n in copied:
                out = _rebuild(out, [False] * len(_leaves(out)), 1)  # fresh copies of every tensor
            got[n], seen[n] = out, _versions(out)

        handles = [self.named[n].register_forward_hook(lambda _m, _a, out, n=n: keep(n, out)) for n in names]
        for n in extra:  # a rank-1 projection: its intact input and output
            handles.append(self.named[n].register_forward_hook(lambda _m, a, out, n=n: keep(n, (a[0], out))))
        try:
            got["__output__"] = batch.run(self.model)
        finally:
            for h in handles:
                h.remove()
        return got, seen

    def stubbing(self, site: Site, batch: Batch) -> tuple[Callable[[int], object], int]:
        """For passes over ``n`` copies of ``batch`` lesioned at ``site`` by the caller's own hook: a
        context factory ``n -> context`` in which every module that finishes before ``site`` returns its
        recorded output (batched leaves repeated ``n`` times) instead of running, and the bytes those
        repeated leaves hold per copy. Raises ``Unsupported`` where nothing finishes before the site."""
        self._plan(batch, [site])
        names = self.stubs(site)
        if not names:
            raise Unsupported(f"no module finishes before site {site.name!r}")
        with torch.no_grad():
            cache = self._capture(batch, names)
        per_copy = sum(
            x.numel() * x.element_size()
            for n in names
            for x, batched in zip(_leaves(cache[n]), self.batched[n], strict=True)
            if batched
        )
        return (lambda n: self._stubbed(site, n, cache)), per_copy

    # ------------------------------------------------------------------------------------------ passes
    def evaluate(
        self, groups: Sequence[tuple[Site, Sequence[Lesion]]], metric: Metric, *, offsets: Sequence[int],
        progress=None, check: tuple[Metric, Sequence[int]] | None = None,
    ) -> None:  # fmt: skip
        """Score each group's lesions (all of whose units start at its site) into ``metric``;
        ``progress(lesions, examples)`` after each pass. ``check = (metric, counts)``: the first
        ``counts[g]`` lesions of group ``g`` are also scored on each batch's spread subset
        (``check_examples``) into the check metric, group after group, for a subset check; ``self.checked``
        then counts the subset's examples."""
        self.checked = 0
        for k, b in enumerate(self._batches()):
            pick = check_examples(b) if check is not None else None
            self.checked += 0 if pick is None else len(pick)
            self._plan(b, [site for site, _ in groups])
            stub_names = {n for site, _ in groups for n in self.stubs(site)}
            proj = [p for site, _ in groups if (p := self.rank1(site)) is not None]
            heads = {s.target: a for s, _ in groups if HEAD_STUB and (a := self._heads.get(s.name))}
            with torch.no_grad():
                cache = self._capture(b, stub_names | set(heads.values()), proj + list(heads))
            intact = output_tensor(cache["__output__"]) if metric.needs_intact else None
            for g, ((site, lesions), offset) in enumerate(zip(groups, offsets, strict=True)):
                step = _chunk(cache, len(lesions))
                for i in range(0, len(lesions), step):
                    part = lesions[i : i + step]
                    out = self._pass(b, k, site, part, cache)
                    out = out.reshape(len(part), len(b), *out.shape[1:])
                    metric.update(out, b, slice(offset + i, offset + i + len(part)), intact=intact)
                    if check is not None and i < check[1][g]:
                        j = min(len(part), check[1][g] - i)
                        at = sum(check[1][:g]) + i
                        check[0].update(
                            out[:j, pick], b.take(pick), slice(at, at + j),
                            intact=None if intact is None else intact[pick],
                        )  # fmt: skip
                    if progress is not None:
                        progress(len(part), len(b))

    def _pass(self, b: Batch, k: int, site: Site, lesions: Sequence[Lesion], cache: dict) -> torch.Tensor:
        n = len(lesions)
        big = b.map(lambda v: v.repeat(n, *[1] * (v.ndim - 1)))
        state = Applied()
        state.sites = dict(self.sites)
        state.batch, state.batch_index = b, k
        projection = self.rank1(site) if _single_constant(lesions, site) else None
        attn = self._heads.get(site.name) if HEAD_STUB and _single_constant(lesions, site) else None
        with _forwards(self.lean), self._stubbed(site, n, cache):  # a stubbed module stays stubbed
            if projection is not None:  # the site and its projection: intact output + rank-1 updates
                with self._rank1_stub(projection, site, lesions, n, cache):
                    out = output_tensor(big.run(self.model))
            elif attn in cache and stub_fits(cache[attn], cache[site.target]):  # heads: closed form
                got = head_output(
                    self.named[site.target], site, lesions, cache[attn], cache[site.target], state
                )
                with _forwards({self.named[attn]: lambda *args, **kwargs: got}):
                    out = output_tensor(big.run(self.model))
            else:
                with self._lesioned(lesions, state, n, len(b)):
                    out = output_tensor(big.run(self.model))
        if out.ndim == 0 or out.shape[0] != n * len(b):
            raise Unsupported("the model's output has no batch axis of lesions x examples")
        return out

    def _stubbed(self, site: Site, n: int, cache: dict):
        """Stub the modules that finish before ``site``: their recorded output, repeated per lesion."""
        return _forwards({
            self.named[name]: functools.partial(_recorded, cache[name], self.batched[name], n)
            for name in self.stubs(site)
        })  # fmt: skip

    @contextmanager
    def _lesioned(self, lesions: Sequence[Lesion], state: Applied, n: int, batch: int):
        """Hooks at every lesioned site: chunk ``i`` of the ``n x batch`` activations gets lesion ``i``."""
        layers = list(dict.fromkeys(layer for les in lesions for layer in les.units))
        handles = []

        def edit(site: Site):
            mine = [(i, les) for i, les in enumerate(lesions) if site.name in les.units]

            def apply(h: torch.Tensor) -> torch.Tensor:
                chunks = list(h.unflatten(0, (n, batch)).unbind(0))
                for i, les in mine:
                    chunks[i] = replace_units(chunks[i], site, les.units, les.replacement, state)
                return torch.stack(chunks).flatten(0, 1)

            return apply

        try:
            for layer in layers:
                site = self.sites[layer]
                handles.append(hook_site(self.named[site.target], site, edit(site)))
            yield
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def _rank1_stub(self, name: str, site: Site, lesions: Sequence[Lesion], n: int, cache: dict):
        """Single neurons with constant replacements: the site returns its intact activity (nothing
        downstream but the projection reads it) and the projection returns its intact output plus, for
        lesion ``i`` deleting neuron ``j``, ``(c_j - a_j) * W[:, j]`` at every position."""
        module, act = self.named[name], self.named[site.target]
        x0, y0 = cache[name]  # the projection's intact input (= the site's activity) and output
        units = torch.tensor([les.units[site.name][0] for les in lesions], device=x0.device)
        fills = torch.stack([les.replacement.fill(site, les)[j] for les, j in zip(lesions, units.tolist(),
                                                                                  strict=True)])  # fmt: skip
        w = module.weight
        cols = (w.T[units] if isinstance(module, nn.Linear) else w[units]).to(x0.dtype)  # (n, out)
        old = x0.movedim(-1, 0)[units]  # (n, batch, ...): a_j of each lesion's neuron
        shape = (n, *[1] * (old.ndim - 1))
        delta = (fills.to(old).reshape(shape) - old).unsqueeze(-1) * cols.reshape(*shape, -1)
        with _forwards({
            module: lambda *args, **kwargs: (y0.unsqueeze(0) + delta).flatten(0, 1),
            act: lambda *args, **kwargs: x0,
        }):  # fmt: skip
            yield


def _chunk(cache: dict, lesions: int) -> int:
    """Lesions per pass: as many as keep the pass's output under ``MAX_PASS_BYTES`` and its activations
    (``EXPANSION`` x the widest tensor recorded on the batch, per lesion) under ``MAX_ACT_BYTES``."""
    out = output_tensor(cache["__output__"]).numel() * 4
    widest = max(
        (x.numel() * x.element_size() for key, v in cache.items() if key != "__output__"
         for x in _leaves(v) if isinstance(x, torch.Tensor)),
        default=0,
    )  # fmt: skip
    return max(1, min(lesions, MAX_PASS_BYTES // max(1, out), MAX_ACT_BYTES // max(1, EXPANSION * widest)))
