"""The rules that turn a card's numbers into its role in words: one table, first match wins.

Every threshold is in ``THRESHOLDS``; every rule says when it applies (``when``, printed on each card
and in docs/roles.md) and the words it writes. Qualifiers (backed up by, replacements disagree) are
appended to any role. A rule whose numbers are missing (NaN: no labels, not measured) does not match.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

THRESHOLDS = {
    "selective": 0.5,  # selectivity index at which a unit "fires on" its preferred class
    "class_drop": 0.1,  # accuracy drop on a class (absolute) at which a unit is "necessary for" it
    "general_share": 0.8,  # share of classes hurt (class loss interval above 0) for "general"
    "pair": 0.01,  # |pair - sum of singles| in loss (nats) for redundancy ("backed up by") or synergy
    "memorisation_ratio": 3.0,  # loss change on mislabeled examples at least this times the others'
    "effect": 0.001,  # |mean loss change| (nats) below which an effect with its interval off 0 is negligible
}


def _ok(*xs: float) -> bool:
    return all(x is not None and not (isinstance(x, float) and math.isnan(x)) for x in xs)


def _pct(x: float) -> str:
    return f"{x * 100:+.0f}%" if abs(x) >= 0.01 or x == 0 else f"{x * 100:+.1f}%"


def _class_hurt(c: dict) -> list[int]:
    return [j for j, lo in enumerate(c["class_loss_zero_lo"]) if _ok(lo) and lo > 0]


def _detector(c: dict) -> bool:
    p = c["preferred_class"]
    if not _ok(c["selectivity"]) or c["selectivity"] < THRESHOLDS["selective"] or p < 0:
        return False
    lo, acc = c["class_loss_zero_lo"], c["class_accuracy_zero"]
    return p < len(lo) and _ok(lo[p], acc[p]) and lo[p] > 0 and -acc[p] >= THRESHOLDS["class_drop"]


def _memorisation(c: dict) -> bool:
    ch, lo, kept = c["mem_changed"], c["mem_changed_lo"], c["mem_kept"]
    if not _ok(ch, lo, kept) or lo <= 0:
        return False
    kept_hi = c["mem_kept_hi"]
    return ch >= THRESHOLDS["memorisation_ratio"] * max(kept, 0.0) and (not _ok(kept_hi) or kept_hi < ch)


def _up(c: dict) -> bool:
    """The overall effect's interval is above 0 and the effect is not negligible."""
    return (
        _ok(c["loss_zero_lo"], c["loss_zero"])
        and c["loss_zero_lo"] > 0
        and c["loss_zero"] >= THRESHOLDS["effect"]
    )


def _down(c: dict) -> bool:
    return (
        _ok(c["loss_zero_hi"], c["loss_zero"])
        and c["loss_zero_hi"] < 0
        and -c["loss_zero"] >= THRESHOLDS["effect"]
    )


def _off_zero(c: dict) -> bool:
    return _ok(c["loss_zero_lo"], c["loss_zero_hi"]) and (c["loss_zero_lo"] > 0 or c["loss_zero_hi"] < 0)


def _general(c: dict) -> bool:
    n = len(c["class_loss_zero_lo"])
    return n > 0 and _up(c) and len(_class_hurt(c)) >= THRESHOLDS["general_share"] * n


def _worst_class(c: dict) -> int:
    acc = [a if _ok(a) else 0.0 for a in c["class_accuracy_zero"]]
    return min(range(len(acc)), key=lambda j: acc[j]) if acc else -1


def _needed_for_class(c: dict) -> bool:
    j = _worst_class(c)
    return j >= 0 and _up(c) and -c["class_accuracy_zero"][j] >= THRESHOLDS["class_drop"]


def _small(c: dict) -> str:
    if _off_zero(c):
        return f"negligible role ({_effect(c)}, under {THRESHOLDS['effect']:g})"
    return "no measurable role (effect inside its interval around 0)"


def _effect(c: dict) -> str:
    return f"{c['loss_zero']:+.3g} loss [{c['loss_zero_lo']:+.2g}, {c['loss_zero_hi']:+.2g}]"


@dataclass(frozen=True)
class Rule:
    name: str
    when: str  # the condition in words, with its thresholds
    test: Callable[[dict], bool]
    words: Callable[[dict], str]


RULES = (
    Rule(
        "memorisation",
        "loss change on the mislabeled training examples has its interval above 0 and is at least "
        f"{THRESHOLDS['memorisation_ratio']:g}x that on the others",
        _memorisation,
        lambda c: (
            f"memorisation unit: needed by the mislabeled examples ({c['mem_changed']:+.3g} loss on "
            f"them, {c['mem_kept']:+.3g} on the others)"
        ),
    ),
    Rule("dead", "largest |activity| on the data is exactly 0", lambda c: c["dead"], lambda c: "dead"),
    Rule(
        "constant",
        "the same activity on every example (not 0)",
        lambda c: c["constant"],
        lambda c: (
            f"constant: {c['mean']:.3g} on every example"
            + (
                f" (a bias: deleting it {_effect(c)})"
                if _ok(c["loss_zero_lo"]) and c["loss_zero_lo"] > 0
                else ""
            )
        ),
    ),
    Rule(
        "estimated",
        "its effect was only estimated (attribution, in an atlas made by triage): no interval, so no role "
        "from effects",
        lambda c: c.get("effect_source") == "estimated",
        lambda c: f"not measured exactly: estimated {c['loss_zero_estimate']:+.3g} loss (attribution)",
    ),
    Rule(
        "class detector",
        f"selectivity >= {THRESHOLDS['selective']:g} for class c, and deleting it (zero) raises the loss "
        f"on c (interval above 0) and drops accuracy on c by >= {THRESHOLDS['class_drop']:g}",
        _detector,
        lambda c: (
            f"class-{c['preferred_class']} detector: fires on {c['preferred_class']} (selectivity "
            f"{c['selectivity']:.2f}); necessary for {c['preferred_class']} "
            f"({_pct(c['class_accuracy_zero'][c['preferred_class']])} on "
            f"{c['preferred_class']}, {_pct(c['accuracy_zero'])} overall)"
        ),
    ),
    Rule(
        "general",
        f"overall loss change interval above 0 (and >= {THRESHOLDS['effect']:g} nats), and class loss "
        f"intervals above 0 for >= "
        f"{THRESHOLDS['general_share']:.0%} of the classes",
        _general,
        lambda c: (
            (
                "general: hurts every class"
                if len(_class_hurt(c)) == len(c["class_loss_zero_lo"])
                else f"general: hurts {len(_class_hurt(c))} of {len(c['class_loss_zero_lo'])} classes"
            )
            + f" ({_effect(c)})"
        ),
    ),
    Rule(
        "needed for a class",
        f"overall loss change interval above 0 (and >= {THRESHOLDS['effect']:g} nats) and accuracy on one "
        f"class drops by >= "
        f"{THRESHOLDS['class_drop']:g} (not selective for it)",
        _needed_for_class,
        lambda c: (
            f"needed for {_worst_class(c)} ({_pct(c['class_accuracy_zero'][_worst_class(c)])} on "
            f"{_worst_class(c)}, {_pct(c['accuracy_zero'])} overall)"
        ),
    ),
    Rule(
        "needed",
        f"overall loss change interval above 0, and the change >= {THRESHOLDS['effect']:g} nats",
        _up,
        lambda c: f"needed: {_effect(c)}",
    ),
    Rule(
        "harmful",
        f"overall loss change interval below 0, and the change <= -{THRESHOLDS['effect']:g} nats "
        "(deleting it helps)",
        _down,
        lambda c: f"deleting it helps: {_effect(c)}",
    ),
    Rule(
        "selective, not needed",
        f"selectivity >= {THRESHOLDS['selective']:g}, no effect of {THRESHOLDS['effect']:g} nats or more",
        lambda c: _ok(c["selectivity"]) and c["selectivity"] >= THRESHOLDS["selective"],
        lambda c: f"fires on {c['preferred_class']} (selectivity {c['selectivity']:.2f}); " + _small(c),
    ),
    Rule(
        "negligible",
        f"the overall loss change interval excludes 0 but the change is under {THRESHOLDS['effect']:g} nats",
        _off_zero,
        lambda c: _small(c),
    ),
    Rule(
        "no measurable role",
        "otherwise: the effect's interval contains 0 (or was not measured)",
        lambda c: True,
        lambda c: "no measurable role (effect inside its interval around 0)",
    ),
)

QUALIFIERS = (
    ("backed up by", f"pair effect - sum of single effects >= {THRESHOLDS['pair']:g} (redundancy)"),
    ("synergy with", f"pair effect - sum of single effects <= -{THRESHOLDS['pair']:g}"),
    (
        "replacements disagree",
        "zero and mean (resample for a language model) effects have opposite signs, one interval "
        "excludes 0 and the "
        f"larger effect is >= {THRESHOLDS['effect']:g} nats",
    ),
)


def role(card: dict) -> tuple[str, str]:
    """(words, rule name) for a card's numbers (a dict of ``Card`` fields)."""
    rule = next(r for r in RULES if r.test(card))
    words = rule.words(card)
    backs = [
        p
        for p, x in zip(card["partners"], card["partner_interaction"], strict=True)
        if _ok(x) and x >= THRESHOLDS["pair"]
    ]
    syn = [
        p
        for p, x in zip(card["partners"], card["partner_interaction"], strict=True)
        if _ok(x) and x <= -THRESHOLDS["pair"]
    ]
    if backs:
        words += f"; backed up by {', '.join(backs[:3])}"
    if syn:
        words += f"; synergy with {', '.join(syn[:3])}"
    if card["sign_disagree"]:
        other = "resample" if _ok(card.get("loss_resample", math.nan)) else "mean"
        words += f"; zero and {other} replacements disagree in sign"
    return words, rule.name


def sign_disagree(zero: float, zlo: float, zhi: float, mean: float, mlo: float, mhi: float) -> bool:
    """Opposite signs, at least one of the two intervals excludes 0, and the larger of the two effects
    is not negligible."""
    if not _ok(zero, mean) or zero * mean >= 0 or max(abs(zero), abs(mean)) < THRESHOLDS["effect"]:
        return False
    return (_ok(zlo, zhi) and (zlo > 0 or zhi < 0)) or (_ok(mlo, mhi) and (mlo > 0 or mhi < 0))


def table() -> list[dict]:
    """The rules and qualifiers as rows (name, when), in order: for the card and the docs."""
    return [{"name": r.name, "when": r.when} for r in RULES] + [{"name": n, "when": w} for n, w in QUALIFIERS]
