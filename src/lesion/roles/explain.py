"""Explanations as claims with a score: an explainer turns what a unit responds to into text, a simulator
turns text back into predicted activity, and the simulation score is the correlation of that prediction
with the real activity on held-out examples (Bills et al. 2023, without a language model by default).

The default explainer writes the unit's mean activity per class on the explanation half of the sample
("activity by class: 0=0.12; 1=2.31"; for a language model the 10 current tokens of largest mean and
the mean over the other tokens, "activity by token: 17=2.3; ...; else=0.04"); the default simulator
reads those numbers back and predicts each held-out example's activity as its class's (or token's).
Either may be replaced by any callable (for example one that asks a language model); one that raises or
returns nonsense becomes a stated omission, never a crash.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lesion.roles.activity import pearson


@dataclass(frozen=True)
class Evidence:
    """What an explainer sees of one unit: examples (ids into the data), their labels and activity
    (activity is None for a simulator: it must predict it), and the unit's top examples."""

    unit: str
    ids: np.ndarray  # (n,) example ids
    labels: np.ndarray | None  # (n,) class labels, or None without labels
    activity: np.ndarray | None  # (n,)
    top: tuple[int, ...] = ()  # ids of its most active examples over all the data
    kind: str = "class"  # what the labels are: "class" (a classifier) or "token" (the current token)


Explainer = Callable[[Evidence], str]
NAMED_TOKENS = 10  # tokens the default explanation of a language model's unit names
Simulator = Callable[[str, Evidence], np.ndarray]


def class_means_explainer(ev: Evidence) -> str:
    """'activity by class: c=mean; ...' (or 'by token') from the explanation examples; needs labels."""
    if ev.labels is None:
        raise ValueError("the rule-based explainer needs class labels (the data has none)")
    classes, inv = np.unique(ev.labels, return_inverse=True)
    counts = np.bincount(inv, minlength=len(classes))
    means = np.bincount(inv, weights=np.asarray(ev.activity, np.float64), minlength=len(classes)) / counts
    return describe(ev.kind, classes, means, counts)


def describe(kind: str, classes: np.ndarray, means: np.ndarray, counts: np.ndarray) -> str:
    """The default explanation from the mean activity per class (or token): every class; for tokens
    the ``NAMED_TOKENS`` of largest mean (ties: the lower id first) and the mean over the rest ("else")."""
    if kind == "token" and len(classes) > NAMED_TOKENS:
        top = np.argsort(-means, kind="stable")[:NAMED_TOKENS]
        rest = np.ones(len(classes), dtype=bool)
        rest[top] = False
        other = float((means[rest] * counts[rest]).sum() / counts[rest].sum())
        parts = [f"{int(classes[i])}={float(means[i]):.6g}" for i in top] + [f"else={other:.6g}"]
    else:
        parts = [f"{int(c)}={float(m):.6g}" for c, m in zip(classes, means, strict=True)]
    return f"activity by {kind}: " + "; ".join(parts)


_PAIR = re.compile(r"(-?\d+)\s*=\s*([-+0-9.eE]+|nan|inf)")
_ELSE = re.compile(r"\belse\s*=\s*([-+0-9.eE]+|nan|inf)")


def class_means_simulator(explanation: str, ev: Evidence) -> np.ndarray:
    """Each example's activity predicted as the number the explanation gives its class (the "else"
    number for a class it does not name, else 0)."""
    if ev.labels is None:
        raise ValueError("the rule-based simulator needs class labels")
    table = {int(c): float(v) for c, v in _PAIR.findall(explanation)}
    if not table:
        raise ValueError("the explanation names no 'class=value' pairs")
    other = _ELSE.search(explanation)
    keys = np.array(sorted(table))
    vals = np.array([table[k] for k in keys])
    labels = np.asarray(ev.labels).astype(np.int64)
    pos = np.searchsorted(keys, labels).clip(0, len(keys) - 1)
    return np.where(keys[pos] == labels, vals[pos], float(other.group(1)) if other else 0.0)


def explain(
    ev_fit: Evidence, ev_test: Evidence, real: np.ndarray, explainer: Explainer, simulator: Simulator
) -> tuple[str, float, list[str]]:
    """(explanation, simulation score, omissions): the explainer on ``ev_fit``, the simulator on
    ``ev_test`` (activity withheld), scored against ``real`` (the held-out activity)."""
    try:
        text = explainer(ev_fit)
    except Exception as exc:  # a user's callable: any failure is reported on the card
        return "", float("nan"), [f"explanation: the explainer raised {type(exc).__name__}: {exc}"]
    if not isinstance(text, str) or not text.strip():
        return "", float("nan"), [f"explanation: the explainer returned {_show(text)}; expected text"]
    try:
        pred = simulator(text, ev_test)
        pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    except Exception as exc:
        return text, float("nan"), [f"simulation score: the simulator raised {type(exc).__name__}: {exc}"]
    if pred.shape != real.shape or not np.isfinite(pred).all():
        what = f"{pred.shape[0]} values" if pred.shape != real.shape else "non-finite values"
        return (
            text,
            float("nan"),
            [f"simulation score: the simulator returned {what}; expected {len(real)} finite numbers"],
        )
    r = pearson(pred, real)
    if np.isnan(r):
        return text, r, ["simulation score: undefined (the prediction or the activity is constant)"]
    return text, r, []


def _show(x) -> str:
    s = repr(x)
    return s if len(s) < 60 else s[:57] + "..."
