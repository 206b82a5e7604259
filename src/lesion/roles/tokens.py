"""Cards of a language model's units: an example is one token (a sequence and a position).

``token_activity`` streams the data twice (the range of each unit's activity and the distinct tokens,
then everything else): top and bottom tokens by activity, a histogram, how often it is active, a sample
for correlations and the simulation score, and its mean activity per current token and per previous
token, reduced at the end to its preferred tokens and its token selectivity. Memory: units x (k + bins +
sample) and, while streaming, two tables of (distinct tokens of the data) x units per site, never the
vocabulary; a head site also sums its attention output (for what the head pushes the output towards).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from lesion.analyses.measures import selectivity_index
from lesion.core.batch import Batch, Data
from lesion.core.capture import grab
from lesion.core.sites import Site
from lesion.errors import DataError
from lesion.roles.activity import Activity, TopK, _histogram

TOKEN_TABLE_CELLS = 1 << 27  # float32 cells of the per-token tables kept at once, over every site
SAMPLE_CELLS = 1 << 26  # float32 cells of the per-token activity sample (tokens x units) at most
MIN_SEEN = 3  # a token counts towards token selectivity where it occurs at least this often
TOP_TOKENS = 5


def input_ids(b: Batch) -> torch.Tensor:
    ids = b.kwargs.get("input_ids", b.args[0] if b.args else None)
    if ids is None or ids.ndim != 2 or ids.dtype.is_floating_point:
        raise DataError("a language model's cards need token ids (batch, seq) as input_ids")
    return ids


def _tokens(model, data, sites, batch_size, raw=None):
    """Yield (site -> (batch * seq, units) activity, token ids (batch * seq,), previous ids, flat ids,
    tokens per sequence); ``raw`` (a dict) gets each head site's (batch * seq, heads * dim) output."""
    width = None
    for acts, b, _ in grab(model, data, sites, batch_size=batch_size):
        ids = input_ids(b).cpu()
        n, t = ids.shape
        width = width or t
        if t != width:
            raise DataError(f"sequences of {t} tokens after sequences of {width}; expected one length")
        prev = torch.cat([torch.full((n, 1), -1), ids[:, :-1]], 1)
        flat = (b.ids.cpu()[:, None] * t + torch.arange(t)[None]).reshape(-1)
        rows = {}
        for s in sites:
            h = acts[s.name].float().cpu()
            if h.ndim != 3 or s.unit_dim != 2:
                raise DataError(
                    f"site {s.name!r} has activity {tuple(h.shape)}; expected (batch, seq, units)"
                )
            if s.heads:  # a head's activity: the norm of its slice of the attention output
                if raw is not None:
                    raw[s.name] = h.reshape(n * t, -1)
                h = h.reshape(n, t, s.width, s.group).norm(dim=-1)
            rows[s.name] = h.reshape(n * t, -1)
        yield rows, ids.reshape(-1), prev.reshape(-1), flat, t


def _ranges(model, data, sites, batch_size):
    """Per site the (units,) range of activity, and the sorted distinct token ids of the data."""
    lo = {s.name: torch.full((s.width,), np.inf, dtype=torch.float64) for s in sites}
    hi = {s.name: torch.full((s.width,), -np.inf, dtype=torch.float64) for s in sites}
    seen = []
    for rows, cur, *_ in _tokens(model, data, sites, batch_size):
        seen.append(cur.unique())
        for name, r in rows.items():
            lo[name] = torch.minimum(lo[name], r.double().amin(0))
            hi[name] = torch.maximum(hi[name], r.double().amax(0))
    return lo, hi, torch.cat(seen).unique()


def token_activity(
    model: nn.Module, data: Data, sites: Sequence[Site], vocab: int, *, k: int = 8, bins: int = 20,
    sample: int = 4000, batch_size: int = 64,
) -> tuple[dict[str, Activity], dict, torch.Tensor, torch.Tensor, int]:  # fmt: skip
    """(findings by site, token parts by site (``preferred``), the current token of every sampled
    token, the sampled tokens' flat ids, tokens per sequence). The sample holds at most
    ``SAMPLE_CELLS`` / units tokens; the per-token tables cover the distinct tokens of the data, for the
    sites (in order) that fit ``TOKEN_TABLE_CELLS``, the others' preferred tokens stated as omitted."""
    lo, hi, distinct = _ranges(model, data, sites, batch_size)
    n_units = sum(s.width for s in sites)
    sample = max(1, min(sample, SAMPLE_CELLS // max(n_units, 1)))
    found, tables, room_cells = {}, {}, TOKEN_TABLE_CELLS
    t = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    for s in sites:
        w = s.width
        edges = lo[s.name][:, None] + (hi[s.name] - lo[s.name])[:, None] * t[None]
        found[s.name] = Activity(
            s, TopK(k, w), TopK(k, w, largest=False), torch.zeros(w, dtype=torch.long), edges,
            torch.zeros(w, bins, dtype=torch.long), torch.empty(0, w), torch.zeros(w, dtype=torch.float64),
            torch.zeros(w, dtype=torch.float64),
        )  # fmt: skip
        if 2 * len(distinct) * w <= room_cells:
            tables[s.name] = [torch.zeros(len(distinct), w) for _ in range(2)]
            room_cells -= 2 * len(distinct) * w
    counts = [torch.zeros(len(distinct), dtype=torch.float64) for _ in range(2)]
    head_sums = {s.name: torch.zeros(s.width * s.group, dtype=torch.float64) for s in sites if s.heads}
    cur_kept, ids_kept, per_seq, raw = [], [], 0, {}
    for rows, cur, prev, flat, t_seq in _tokens(model, data, sites, batch_size, raw):
        per_seq = t_seq
        room = max(0, sample - sum(len(i) for i in ids_kept))
        ids_kept.append(flat[:room])
        cur_kept.append(cur[:room])
        has_prev = prev >= 0
        slot, pslot = torch.searchsorted(distinct, cur), torch.searchsorted(distinct, prev[has_prev])
        counts[0] += torch.bincount(slot, minlength=len(distinct)).double()
        counts[1] += torch.bincount(pslot, minlength=len(distinct)).double()
        for name, h in raw.items():
            head_sums[name] += h.double().sum(0)
        for s in sites:
            f, act = found[s.name], rows[s.name]
            zero = torch.zeros_like(act, dtype=torch.long)
            f.top.update(act, flat, zero)
            f.bottom.update(act, flat, zero)
            f.active += (act > 0).sum(0)
            f.counts += _histogram(act.double(), f.edges)
            f.sample = torch.cat([f.sample, act[:room]])
            f.s1 += act.double().sum(0)
            f.s2 += (act.double() ** 2).sum(0)
            f.n += act.shape[0]
            if s.name in tables:
                tables[s.name][0].index_add_(0, slot, act)
                tables[s.name][1].index_add_(0, pslot, act[has_prev])
    parts = {name: preferred(pair, counts, distinct) for name, pair in tables.items()}
    for name, total in head_sums.items():
        parts.setdefault(name, {})["mean_input"] = (total / max(found[name].n, 1)).numpy()
    return found, parts, torch.cat(cur_kept), torch.cat(ids_kept), per_seq


def preferred(tables, counts, distinct: torch.Tensor) -> dict[str, np.ndarray]:
    """One site's token parts from its summed tables (distinct tokens, units) and token counts: the
    ``TOP_TOKENS`` current and previous tokens of largest mean activity (ids -1 past the tokens seen)
    with those means, and the token selectivity and preferred token over the tokens seen at least
    ``MIN_SEEN`` times (NaN and -1 where fewer than 2 are)."""
    out = {}
    for name, tab, c in zip(("current", "previous"), tables, counts, strict=True):
        means = tab.double() / c.clamp_min(1)[:, None]
        ids, vals = top_rows(means.numpy(), c.numpy(), TOP_TOKENS)
        out[f"{name}_ids"] = np.where(ids >= 0, distinct.numpy()[ids.clip(0)], -1)
        out[f"{name}_means"] = vals
    width = tables[0].shape[1]
    often = counts[0] >= MIN_SEEN
    out["selectivity"], out["preferred"] = np.full(width, np.nan), np.full(width, -1)
    if int(often.sum()) >= 2:
        means = tables[0][often].double() / counts[0][often][:, None]
        si, pref = selectivity_index(means)
        out["selectivity"] = si
        out["preferred"] = np.where(pref >= 0, distinct[often].numpy()[pref.clip(0)], -1)
    return out


def top_rows(values: np.ndarray, counts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(k, units) row positions of the ``k`` largest ``values`` (rows, units) among the rows seen
    (count > 0), largest first (ties: the lower row first), and those values; -1 and NaN past them."""
    v = np.where((counts > 0)[:, None], values, -np.inf)
    order = np.argsort(-v, axis=0, kind="stable")[:k]
    vals = np.take_along_axis(v, order, 0)
    ok = np.isfinite(vals)
    return np.where(ok, order, -1), np.where(ok, vals, np.nan)


OMITTED = (
    "language model: an example is a token (a sequence and a position); no class parts (the causal test "
    "is per token: the units whose preferred token is t, against as many random units of the layer, on "
    "the positions predicting t); effects under zero, mean and resample (another sequence's activity, "
    "seeded); the direct effect on the next-token loss stands beside the total, for MLP neurons"
)


def direct(model: nn.Module, data: Data, sites: Sequence[Site], batch_size: int, units=None) -> dict:
    """Each neuron's direct effect (zero) on the next-token loss through the residual stream alone
    (``lesion.direct_effects``; ``units``: only these, as text), by unit text; empty (with the reason)
    where the model's layout is not the one it reads."""
    from lesion.analyses.direct import direct_effects
    from lesion.errors import LesionError

    if units is not None and not units:
        return {"why": np.array("no neuron was measured exactly")}
    try:
        df = direct_effects(model, data, sites=list(sites), total=False, batch_size=batch_size, units=units)
    except (LesionError, RuntimeError) as exc:
        return {"why": np.array(str(exc))}
    return {"units": df["unit"].astype(str).to_numpy(), "direct": df["direct"].to_numpy(np.float64)}
