"""Cards of a language model's MLP neurons: an example is one token (a sequence and a position).

``token_activity`` streams the data twice (the range of each neuron's activity, then everything else):
top and bottom tokens by activity, a histogram, how often it is active, a sample for correlations and
the simulation score, and its mean activity per current token and per previous token (its preferred
tokens). ``NextTokenChange`` scores a lesion by each sequence's next-token loss with the lesion minus
without it (the mean over its predicted positions): sums and squares for intervals over sequences, and
the loss change summed per target token (which tokens lose the most probability).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lesion.core.batch import Batch, Data
from lesion.core.capture import grab
from lesion.core.metric import Metric
from lesion.core.metric_lm import _next_token
from lesion.core.sites import Site
from lesion.errors import DataError
from lesion.roles.activity import Activity, TopK, _histogram

MAX_TOKEN_TABLE = 50_000_000  # vocab x units of the per-token means kept at most per site


def input_ids(b: Batch) -> torch.Tensor:
    ids = b.kwargs.get("input_ids", b.args[0] if b.args else None)
    if ids is None or ids.ndim != 2 or ids.dtype.is_floating_point:
        raise DataError("a language model's cards need token ids (batch, seq) as input_ids")
    return ids


def _tokens(model, data, sites, batch_size):
    """Yield (site -> (batch * seq, units) activity, token ids (batch * seq,), previous ids, flat ids)."""
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
                h = h.reshape(n, t, s.width, s.group).norm(dim=-1)
            rows[s.name] = h.reshape(n * t, -1)
        yield rows, ids.reshape(-1), prev.reshape(-1), flat, t


def token_activity(
    model: nn.Module, data: Data, sites: Sequence[Site], vocab: int, *, k: int = 8, bins: int = 20,
    sample: int = 4000, batch_size: int = 64,
) -> tuple[dict[str, Activity], dict, torch.Tensor, torch.Tensor, int]:  # fmt: skip
    """(findings by site, {site: (current means (vocab, units), previous means)} or None where too big,
    the current token of every sampled token, the sampled tokens' flat ids, tokens per sequence)."""
    lo = {s.name: torch.full((s.width,), np.inf, dtype=torch.float64) for s in sites}
    hi = {s.name: torch.full((s.width,), -np.inf, dtype=torch.float64) for s in sites}
    for rows, *_ in _tokens(model, data, sites, batch_size):
        for name, r in rows.items():
            lo[name] = torch.minimum(lo[name], r.double().amin(0))
            hi[name] = torch.maximum(hi[name], r.double().amax(0))
    found, tables = {}, {}
    t = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    for s in sites:
        w = s.width
        edges = lo[s.name][:, None] + (hi[s.name] - lo[s.name])[:, None] * t[None]
        found[s.name] = Activity(
            s, TopK(k, w), TopK(k, w, largest=False), torch.zeros(w, dtype=torch.long), edges,
            torch.zeros(w, bins, dtype=torch.long), torch.empty(0, w), torch.zeros(w, dtype=torch.float64),
            torch.zeros(w, dtype=torch.float64),
        )  # fmt: skip
        if vocab * w <= MAX_TOKEN_TABLE:
            tables[s.name] = [torch.zeros(vocab, w, dtype=torch.float64) for _ in range(2)]
    counts = [torch.zeros(vocab, dtype=torch.float64) for _ in range(2)]
    cur_kept, ids_kept, per_seq = [], [], 0
    for rows, cur, prev, flat, t_seq in _tokens(model, data, sites, batch_size):
        per_seq = t_seq
        room = max(0, sample - sum(len(i) for i in ids_kept))
        ids_kept.append(flat[:room])
        cur_kept.append(cur[:room])
        has_prev = prev >= 0
        counts[0] += torch.bincount(cur, minlength=vocab).double()
        counts[1] += torch.bincount(prev[has_prev], minlength=vocab).double()
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
                tables[s.name][0].index_add_(0, cur, act.double())
                tables[s.name][1].index_add_(0, prev[has_prev], act[has_prev].double())
    means = {
        name: tuple(tab / c.clamp_min(1)[:, None] for tab, c in zip(pair, counts, strict=True))
        for name, pair in tables.items()
    }
    means["_counts"] = counts
    return found, means, torch.cat(cur_kept), torch.cat(ids_kept), per_seq


class NextTokenChange(Metric):
    """Per-sequence next-token loss change (lesioned - intact): ``dsum``, ``dsq``, ``count`` (sequences),
    ``accuracy`` (mean change of the share of tokens predicted right), ``dsum_token``/``count_token``
    (vocab,) the loss change summed over the positions predicting each token."""

    needs_intact = True

    def __init__(self, vocab: int):
        self.vocab = vocab

    def update(self, outputs, batch, lesions, intact=None, fused=False):
        logits, target, valid = _next_token(outputs, batch)  # (k, m, V), (m,), (m,)
        k, m, _ = logits.shape
        base, _, _ = _next_token(intact[None], batch)
        per_seq = outputs.shape[2] - 1
        seq = torch.arange(m, device=target.device) // per_seq  # (m,) sequence of each position
        n = outputs.shape[1]
        ce = F.cross_entropy(logits.float().flatten(0, 1), target.repeat(k), reduction="none").reshape(k, m)
        ce0 = F.cross_entropy(base[0].float(), target, reduction="none")
        d = (ce.double() - ce0.double()[None]) * valid.double()[None]  # (k, m)
        right = (logits.argmax(-1) == target).double() - (base[0].argmax(-1) == target).double()[None]
        seq_n = torch.zeros(n, dtype=torch.float64).index_add_(0, seq, valid.double())  # (n,)
        d_seq = torch.zeros(k, n, dtype=torch.float64).index_add_(1, seq, d) / seq_n.clamp_min(1)[None]
        has = (seq_n > 0).double()
        self._add("dsum", lesions, d_seq.sum(1).cpu().numpy())
        self._add("dsq", lesions, (d_seq**2).sum(1).cpu().numpy())
        self._add("count", lesions, np.full(k, float(has.sum())))
        self._add("right", lesions, (right * valid.double()[None]).sum(1).cpu().numpy())
        self._add("tokens", lesions, np.full(k, float(valid.sum())))
        tok = torch.where(valid, target, torch.zeros_like(target)).long()
        self._add(
            "dsum_token",
            lesions,
            torch.zeros(k, self.vocab, dtype=torch.float64).index_add_(1, tok, d).cpu().numpy(),
        )
        self._add(
            "count_token",
            lesions,
            torch.bincount(tok[valid], minlength=self.vocab).double().expand(k, -1).cpu().numpy(),
        )

    def compute(self):
        s = self.sums
        out = {key: v for key, v in s.items() if key not in ("right", "tokens")}
        with np.errstate(invalid="ignore", divide="ignore"):
            out["accuracy"] = s["right"] / s["tokens"]
        return out


OMITTED = (
    "language model: an example is a token (a sequence and a position); no class parts, no causal test "
    "and no output pushes yet (the direct effect on the next-token loss stands beside the total, for MLP "
    "neurons); effects under zero, mean and resample (another sequence's activity, seeded)"
)


def direct(model: nn.Module, data: Data, sites: Sequence[Site], batch_size: int) -> dict[str, np.ndarray]:
    """Each neuron's direct effect (zero) on the next-token loss through the residual stream alone
    (``lesion.direct_effects``), by unit text; empty (with the reason) where the model's layout is not
    the one it reads."""
    from lesion.analyses.direct import direct_effects
    from lesion.errors import LesionError

    try:
        df = direct_effects(model, data, sites=list(sites), total=False, batch_size=batch_size)
    except (LesionError, RuntimeError) as exc:
        return {"why": np.array(str(exc))}
    return {"units": df["unit"].astype(str).to_numpy(), "direct": df["direct"].to_numpy(np.float64)}


def top_tokens(
    values: np.ndarray, counts: np.ndarray, k: int = 5
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The ``k`` tokens of largest ``values`` among those seen (count > 0), largest first."""
    seen = np.flatnonzero(counts > 0)
    order = seen[np.argsort(-values[seen], kind="stable")[:k]]
    return tuple(int(t) for t in order), tuple(float(values[t]) for t in order)


class _Patterns:
    """While open, ``F.scaled_dot_product_attention`` also records its attention probabilities (batch,
    heads, queries, keys), call by call; the function is restored on exit. It replaces a module attribute
    for the whole process: not for use while another thread runs attention (the explorer holds its lesion
    lock)."""

    def __enter__(self):
        self.calls: list[torch.Tensor] = []
        self.original = F.scaled_dot_product_attention

        def recording(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
            scores = q.float() @ _repeat_kv(k, q).float().transpose(-2, -1) * (scale or q.shape[-1] ** -0.5)
            tq, tk = scores.shape[-2:]
            if is_causal:
                scores = scores.masked_fill(
                    ~torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq), float("-inf")
                )
            if attn_mask is not None:
                scores = (
                    scores.masked_fill(~attn_mask, float("-inf"))
                    if attn_mask.dtype == torch.bool
                    else scores + attn_mask.float()
                )
            self.calls.append(torch.softmax(scores, -1).nan_to_num(0.0).cpu())
            return self.original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                 scale=scale, **kw)  # fmt: skip

        F.scaled_dot_product_attention = recording
        return self

    def __exit__(self, *exc):
        F.scaled_dot_product_attention = self.original


def _repeat_kv(k: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Keys repeated to the query heads (grouped-query attention)."""
    return k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3) if k.shape[-3] != q.shape[-3] else k


def head_patterns(model: nn.Module, data: Data, heads: Sequence[Site], batch_size: int) -> dict:
    """Per head site, (3, heads) mean attention on the previous token, on the first token, and on earlier
    copies of the current token (positions that have one); where the model's attention calls cannot be
    matched to its head sites, ``{"why": ...}``."""
    from lesion.core.batch import batches
    from lesion.util.modules import eval_mode

    sums = {s.name: torch.zeros(3, s.width, dtype=torch.float64) for s in heads}
    counts = torch.zeros(3, dtype=torch.float64)
    order = sorted(heads, key=lambda s: s.order)
    for b in batches(data, batch_size=batch_size):
        with torch.no_grad(), eval_mode(model), _Patterns() as rec:
            b.run(model)
        if len(rec.calls) != len(order):
            return {"why": f"{len(rec.calls)} attention calls for {len(order)} head sites; cannot match them"}
        t = rec.calls[0].shape[-1]
        try:
            ids = input_ids(b).cpu()
        except DataError:  # not tokens (image patches): no copies of a token
            ids = torch.arange(len(b) * t).reshape(len(b), t)
        same = (ids[:, :, None] == ids[:, None, :]) & torch.ones(t, t, dtype=torch.bool).tril(-1)  # (b, t, t)
        has = same.any(-1)  # (b, t): an earlier copy exists
        counts += torch.tensor([ids.shape[0] * (t - 1), ids.shape[0] * (t - 1), float(has.sum())])
        for s, a in zip(order, rec.calls, strict=True):
            if a.shape[1] != s.width or a.shape[-1] != t:
                return {
                    "why": f"an attention call gave {tuple(a.shape)}; expected (batch, {s.width}, {t}, {t})"
                }
            prev = a.diagonal(offset=-1, dim1=-2, dim2=-1).sum((0, 2))  # (heads,)
            first = a[:, :, 1:, 0].sum((0, 2))
            dup = (a * same[:, None]).sum(-1)  # (b, heads, t)
            dup = (dup * has[:, None]).sum((0, 2))
            sums[s.name] += torch.stack([prev, first, dup]).double()
    return {name: (v / counts.clamp_min(1)[:, None]).numpy() for name, v in sums.items()}
