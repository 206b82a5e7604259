"""What breaks without a language model's unit: the next-token loss change as a metric.

``NextTokenChange`` scores a lesion by each sequence's next-token loss with the lesion minus without it
(the mean over its predicted positions): sums and squares for intervals over sequences, and the loss
change summed per target token, of which it keeps the tokens that lose the most probability. The
per-token sums live on the tokens that occur as targets in the data (``targets``), not the vocabulary, so
a lesion's accumulator is (lesions, distinct targets), never (lesions, vocabulary) for a 50k vocabulary.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lesion.core.batch import Data, batches
from lesion.core.metric import Metric
from lesion.core.metric_lm import _next_token
from lesion.roles.tokens import input_ids

TOP_TOKENS = 5  # the next tokens that lose the most, kept per lesion


def target_tokens(data: Data, batch_size: int) -> torch.Tensor:
    """The sorted distinct token ids that follow another token somewhere in ``data`` (the targets)."""
    seen = [input_ids(b)[:, 1:].reshape(-1).cpu().unique() for b in batches(data, batch_size=batch_size)]
    return torch.cat(seen).unique() if seen else torch.zeros(0, dtype=torch.long)


class NextTokenChange(Metric):
    """Per-sequence next-token loss change (lesioned - intact): ``dsum``, ``dsq``, ``count`` (sequences),
    ``loss`` (their mean: the main column, which triage ranks), ``accuracy`` (mean change of the share of
    tokens predicted right) and ``next_token_ids``/``next_token_loss`` (lesions, 5): the target tokens
    whose summed loss change is largest (-1 and NaN where fewer tokens occur). ``targets``: the token
    ids that can occur as targets (``target_tokens``; None: the whole vocabulary); ``per_token``: also
    ``dsum_token``/``count_token`` (lesions, targets), the sums themselves."""

    main, needs_intact = "loss", True
    exempt = ("next_token_ids", "next_token_loss")  # follow the sums: a near-tie may reorder them

    def __init__(self, vocab: int, targets: torch.Tensor | None = None, *, per_token: bool = False):
        self.vocab, self.per_token = vocab, per_token
        self.targets = None if targets is None else torch.as_tensor(targets).long().cpu().unique()

    def _slots(self, tok: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(slot of each target token, valid and among ``targets``, number of slots)."""
        if self.targets is None:
            return tok, valid, self.vocab
        t = self.targets.to(tok.device)
        slot = torch.searchsorted(t, tok).clamp_max(max(len(t) - 1, 0))
        found = valid & (t[slot] == tok) if len(t) else torch.zeros_like(valid)
        return torch.where(found, slot, torch.zeros_like(slot)), found, len(t)

    def loss(self, output, batch):
        """(the batch's sum over sequences of their mean next-token loss, the sequences counted)."""
        logits, target, valid = _next_token(output[None], batch)
        n, per_seq = output.shape[0], output.shape[1] - 1
        ce = F.cross_entropy(logits[0].float(), target.long(), reduction="none") * valid
        v = valid.reshape(n, per_seq).float()
        per = ce.reshape(n, per_seq).sum(1) / v.sum(1).clamp_min(1)
        return per[v.sum(1) > 0].sum(), float((v.sum(1) > 0).sum())

    def update(self, outputs, batch, lesions, intact=None):
        logits, target, valid = _next_token(outputs, batch)  # (k, m, V), (m,), (m,)
        k, m, _ = logits.shape
        ce0, right0 = self._intact(intact, batch, target)
        per_seq = outputs.shape[2] - 1
        seq = torch.arange(m, device=target.device) // per_seq  # (m,) sequence of each position
        n = outputs.shape[1]
        ce = F.cross_entropy(logits.float().flatten(0, 1), target.repeat(k), reduction="none").reshape(k, m)
        d = (ce.double() - ce0.double()[None]) * valid.double()[None]  # (k, m)
        right = (logits.argmax(-1) == target).double() - right0[None]
        seq_n = torch.zeros(n, dtype=torch.float64).index_add_(0, seq, valid.double())  # (n,)
        d_seq = torch.zeros(k, n, dtype=torch.float64).index_add_(1, seq, d) / seq_n.clamp_min(1)[None]
        has = (seq_n > 0).double()
        self._add("dsum", lesions, d_seq.sum(1).cpu().numpy())
        self._add("dsq", lesions, (d_seq**2).sum(1).cpu().numpy())
        self._add("count", lesions, np.full(k, float(has.sum())))
        self._add("right", lesions, (right * valid.double()[None]).sum(1).cpu().numpy())
        self._add("tokens", lesions, np.full(k, float(valid.sum())))
        slot, found, width = self._slots(target.long(), valid)
        per = torch.zeros(k, width, dtype=torch.float64).index_add_(1, slot, d * found.double()[None])
        self._add("dsum_token", lesions, per.cpu().numpy())
        count = torch.bincount(slot[found], minlength=width).double()
        self._add("count_token", lesions, count.expand(k, -1).cpu().numpy())

    def _intact(self, intact: torch.Tensor, batch, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The intact loss and correctness at each position, computed once per intact output (the engines
        call ``update`` many times with the same intact batch)."""
        held = getattr(self, "_held", None)
        if held is None or held[0] is not intact:
            base, _, _ = _next_token(intact[None], batch)
            ce0 = F.cross_entropy(base[0].float(), target, reduction="none")
            held = (intact, ce0, (base[0].argmax(-1) == target).double())
            self._held = held
        return held[1], held[2]

    def reset(self, n: int) -> None:
        super().reset(n)
        self._held = None

    def compute(self):
        s = self.sums
        out = {key: s[key] for key in ("dsum", "dsq", "count")}
        with np.errstate(invalid="ignore", divide="ignore"):
            out["accuracy"] = s["right"] / s["tokens"]
            out["loss"] = s["dsum"] / s["count"]
        ids, loss = self._top(s["dsum_token"], s["count_token"])
        out |= {"next_token_ids": ids, "next_token_loss": loss}
        if self.per_token:
            out |= {"dsum_token": s["dsum_token"], "count_token": s["count_token"]}
        return out

    def _top(self, dsum: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lesions, 5) token ids and summed loss changes of the largest sums among the tokens seen,
        largest first (ties: the lower id first, as ``top_tokens``)."""
        v = np.where(count > 0, dsum, -np.inf)
        order = np.argsort(-v, axis=1, kind="stable")[:, :TOP_TOKENS]
        vals = np.take_along_axis(v, order, 1)
        ids = order if self.targets is None else self.targets.numpy()[order]
        ids = np.where(np.isfinite(vals), ids, -1).astype(np.float64)
        pad = TOP_TOKENS - ids.shape[1]
        if pad:
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            vals = np.pad(vals, ((0, 0), (0, pad)), constant_values=-np.inf)
        return ids, np.where(np.isfinite(vals), vals, np.nan)


CAUSAL_GROUPS = 8  # (layer, token) groups a language model's causal test tries at most


def causal_tokens(model, data, sites, token_parts, vocab, draws, seed, batch_size) -> dict[str, np.ndarray]:
    """Bau et al.'s necessity test for a language model, per (layer, token t): the units of the layer
    whose preferred token is t (token selectivity >= the rules' threshold, ``tokens.preferred``) deleted
    together, against ``draws`` random sets of as many other units of the layer, each scored by the mean
    loss change at the positions predicting t (on the sequences where t is a target). The
    ``CAUSAL_GROUPS`` groups with the most named units are tested. Arrays by row, as the classifier's
    test (``cls`` holds the token)."""
    from lesion.core.runner import Runner
    from lesion.core.units import Unit
    from lesion.roles.effects import set_effects
    from lesion.roles.rules import THRESHOLDS
    from lesion.roles.stages import necessity

    groups = []
    scored = _targets(data, batch_size)  # a token that is never a target has no position to score
    for s in sites:
        parts = token_parts.get(s.name, {})
        if "selectivity" not in parts:
            continue
        named_all = np.nan_to_num(parts["selectivity"], nan=-1) >= THRESHOLDS["selective"]
        for t in np.unique(parts["preferred"][named_all]):
            if scored is not None and int(t) not in scored:
                continue  # e.g. a token found only at the first position: the test has nothing to score
            named = np.flatnonzero(named_all & (parts["preferred"] == t))
            others = np.setdiff1d(np.arange(s.width), named)
            if len(others) >= len(named):
                groups.append((s.name, int(t), named, others))
    groups = sorted(groups, key=lambda g: -len(g[2]))[:CAUSAL_GROUPS]
    if not groups:
        return {}
    g = np.random.default_rng(seed)
    rows, sets = [], []
    for layer, t, named, others in groups:
        rows.append((layer, t, len(named)))
        sets.append([Unit(layer, int(j)) for j in named])
        for _ in range(draws):
            sets.append([Unit(layer, int(j)) for j in g.choice(others, len(named), replace=False)])
    m = np.full(len(sets), np.nan)  # mean loss change at the positions predicting t, per set
    for t in sorted({r[1] for r in rows}):
        idx = [r * (draws + 1) + q for r, row in enumerate(rows) if row[1] == t for q in range(draws + 1)]
        metric = NextTokenChange(vocab, torch.tensor([t]), per_token=True)
        runner = Runner(model, _with_target(data, t, batch_size), sites, metric=metric, batch_size=batch_size)
        v = set_effects(runner, [sets[i] for i in idx])
        with np.errstate(invalid="ignore", divide="ignore"):
            m[idx] = v["dsum_token"][:, 0] / v["count_token"][:, 0]
    return necessity(rows, m, draws)


def _ids(data: Data, batch_size: int) -> list[torch.Tensor] | None:
    """Each batch's ``input_ids`` where the batches carry ``input_ids`` alone; else None."""
    out = []
    for b in batches(data, batch_size=batch_size):
        if b.args or set(b.kwargs) != {"input_ids"}:
            return None
        out.append(b.kwargs["input_ids"])
    return out


def _targets(data: Data, batch_size: int) -> set[int] | None:
    """The tokens that are a target somewhere in ``data`` (follow another token), where the batches carry
    ``input_ids`` alone; else None (every token counts as present)."""
    ids = _ids(data, batch_size)
    return None if ids is None else {t for x in ids for t in torch.unique(x[:, 1:]).tolist()}


def _with_target(data: Data, t: int, batch_size: int) -> Data:
    """The sequences of ``data`` in which token ``t`` is a target (follows another token), where the
    batches carry ``input_ids`` alone; else ``data`` itself (the other positions count for nothing)."""
    ids = _ids(data, batch_size)
    return data if ids is None else {"input_ids": torch.cat([x[(x[:, 1:] == t).any(1)] for x in ids])}
