"""The cards as the atlas page holds them (``cards.json`` and the data of atlas.html): by column, small.

A column with one value for every card is stored once (``const``); a text column with repeats as its
distinct texts and an index per card; the omissions as indices into one table of texts (``omitted``);
numbers rounded to ``PAGE_DIGITS`` significant digits (``roles.parquet`` keeps every digit), NaN as
null. Built column by column with numpy, so 37,008 cards take seconds, not minutes. ``cards_of`` reads
the cards back as atlas.html decodes them.

>>> from lesion.roles.card import Card
>>> doc = page_cards([Card("a:0", "a", 0, "neuron", 3, mean=0.123456), Card("a:1", "a", 1, "neuron", 3)])
>>> doc["const"]["n_examples"], doc["columns"]["mean"], cards_of(doc)[0]["mean"]
(3, [0.1235, None], 0.1235)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lesion.roles.card import CARD_FIELDS, Card

PAGE_DIGITS = 4  # significant digits of the page's numbers
PAGE_SKIPS = ("hist_edges",)  # card fields the page does not draw (equal-width bins from lo to hi)


def page_cards(cards: Sequence[Card]) -> dict:
    """``{"n", "fields", "const", "columns", "omitted"}``: the cards by column (see the module doc)."""
    fields = [f for f in CARD_FIELDS if f not in PAGE_SKIPS]
    omitted: dict[str, int] = {}
    columns, const = {}, {}
    for f in fields:
        raw = [getattr(c, f) for c in cards]
        if f == "omissions":
            values = [[omitted.setdefault(o, len(omitted)) for o in v] for v in raw]
        else:
            values = _column(raw)
        if values and all(v == values[0] for v in values):
            const[f] = values[0]
        elif raw and all(isinstance(v, str) for v in raw) and len(set(raw)) <= len(raw) // 2:
            distinct = list(dict.fromkeys(raw))
            at = {v: k for k, v in enumerate(distinct)}
            columns[f] = {"texts": distinct, "index": [at[v] for v in raw]}
        else:
            columns[f] = values
    return {"n": len(cards), "fields": fields, "const": const, "columns": columns, "omitted": list(omitted)}


def _column(raw: list) -> list:
    """One field of every card as plain JSON values: floats (also inside tuples) rounded, NaN as None."""
    if not raw:
        return []
    if isinstance(raw[0], tuple):
        lengths = [len(v) for v in raw]
        flat = [x for v in raw for x in v]
        if not flat or not all(isinstance(x, float) for x in flat):
            return [list(v) for v in raw]
        values = _rounded(np.asarray(flat, dtype=np.float64))
        ends = np.cumsum(lengths)
        return [values[e - n : e] for e, n in zip(ends, lengths, strict=True)]
    if isinstance(raw[0], float) and all(isinstance(x, float) for x in raw):
        return _rounded(np.asarray(raw, dtype=np.float64))
    return list(raw)


def _rounded(x: np.ndarray) -> list:
    """``x`` to ``PAGE_DIGITS`` significant digits, as the shortest floats that print so; NaN and
    infinities as None. Scaling by an exact power of ten and back keeps the result the nearest double to
    the rounded decimal."""
    ok = np.isfinite(x) & (x != 0)
    e = np.zeros(len(x), dtype=np.int64)
    e[ok] = PAGE_DIGITS - 1 - np.floor(np.log10(np.abs(x[ok]))).astype(np.int64)
    up = e >= 0
    out = x.copy()
    scale_up = 10.0 ** np.clip(e, 0, 300)
    scale_down = 10.0 ** np.clip(-e, 0, 300)
    out[ok & up] = np.round(x[ok & up] * scale_up[ok & up]) / scale_up[ok & up]
    out[ok & ~up] = np.round(x[ok & ~up] / scale_down[ok & ~up]) * scale_down[ok & ~up]
    values = out.tolist()
    for i in np.flatnonzero(~np.isfinite(x)):
        values[i] = None
    return values


def cards_of(doc: dict) -> list[dict]:
    """The cards of a ``page_cards`` document (``cards.json``), one dict each, as atlas.html decodes them."""
    cols, out = doc["columns"], []
    for i in range(doc["n"]):
        c = dict(doc["const"])
        for f, col in cols.items():
            c[f] = col["texts"][col["index"][i]] if isinstance(col, dict) else col[i]
        c["omissions"] = [doc["omitted"][k] for k in c.get("omissions", [])]
        out.append({f: c[f] for f in doc["fields"]})
    return out
