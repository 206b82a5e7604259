"""Explanations as claims with a score: an explainer turns what a unit responds to into text, a simulator
turns text back into predicted activity, and the simulation score is the correlation of that prediction
with the real activity on held-out examples (Bills et al. 2023, without a language model by default).

The default explainer writes the unit's mean activity per class on the explanation half of the sample
("activity by class: 0=0.12; 1=2.31"); the default simulator reads those numbers back and predicts each
held-out example's activity as its class's. Either may be replaced by any callable (for example one that
asks a language model); one that raises or returns nonsense becomes a stated omission, never a crash.
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
Simulator = Callable[[str, Evidence], np.ndarray]


def class_means_explainer(ev: Evidence) -> str:
    """'activity by class: c=mean; ...' (or 'by token') from the explanation examples; needs labels."""
    if ev.labels is None:
        raise ValueError("the rule-based explainer needs class labels (the data has none)")
    parts = []
    for c in np.unique(ev.labels):
        parts.append(f"{int(c)}={float(ev.activity[ev.labels == c].mean()):.6g}")
    return f"activity by {ev.kind}: " + "; ".join(parts)


_PAIR = re.compile(r"(-?\d+)\s*=\s*([-+0-9.eE]+|nan|inf)")


def class_means_simulator(explanation: str, ev: Evidence) -> np.ndarray:
    """Each example's activity predicted as the number the explanation gives its class (0 if none)."""
    if ev.labels is None:
        raise ValueError("the rule-based simulator needs class labels")
    table = {int(c): float(v) for c, v in _PAIR.findall(explanation)}
    if not table:
        raise ValueError("the explanation names no 'class=value' pairs")
    return np.array([table.get(int(c), 0.0) for c in ev.labels])


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
