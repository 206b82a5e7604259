"""The card of one unit: a frozen record of every number the atlas shows, and nothing measured later.

Every field is a number, a string or a tuple of them, so one card is one row of ``roles.parquet``
(tuples become list columns) and one JSON object of the atlas page. NaN marks a number that was not
measured; ``omissions`` says why, in words, for each part left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

NaN = math.nan


@dataclass(frozen=True)
class Card:
    """One unit's card; the parts follow the issue's letters (a: responds to ... g: explainer)."""

    unit: str  # "layer:index"
    layer: str
    index: int
    kind: str  # "neuron", "feature map", "neuron (every position)" or "attention head"
    n_examples: int
    # a. what it responds to (per-example activity; a feature map averaged over space)
    mean: float = NaN
    sd: float = NaN
    lo: float = NaN
    hi: float = NaN
    frequency_active: float = NaN  # share of examples with activity > 0 (a map: anywhere)
    dead: bool = False  # largest |activity| over every element exactly 0
    constant: bool = False  # the same per-example activity on every example
    hist_edges: tuple[float, ...] = ()
    hist_counts: tuple[int, ...] = ()
    top_index: tuple[int, ...] = ()  # examples by activity, largest first (ties: lower index first)
    top_activity: tuple[float, ...] = ()
    top_label: tuple[int, ...] = ()
    top_where: tuple[int, ...] = ()  # a feature map: flat position of its maximum in that example
    bottom_index: tuple[int, ...] = ()  # smallest first
    bottom_activity: tuple[float, ...] = ()
    bottom_label: tuple[int, ...] = ()
    selectivity: float = NaN
    preferred_class: int = -1
    mutual_info: float = NaN
    class_means: tuple[float, ...] = ()
    preferred_tokens: tuple[int, ...] = ()  # a language model: current tokens of largest mean activity
    preferred_token_means: tuple[float, ...] = ()
    previous_tokens: tuple[int, ...] = ()  # previous tokens of largest mean activity
    previous_token_means: tuple[float, ...] = ()
    head_previous: float = NaN  # an attention head: mean attention on the previous token
    head_first: float = NaN  # on the first token
    head_duplicate: float = NaN  # on earlier copies of the current token (positions that have one)
    token_selectivity: float = NaN  # a language model: selectivity over tokens seen at least 3 times
    preferred_token: int = -1  # ... and the token it prefers (the one the causal test names)
    # b. what breaks without it: mean per-example loss change (lesioned - intact), 95% interval
    effect_source: str = "exact"  # "estimated": loss_zero is the attribution estimate (triage), no interval
    loss_zero_estimate: float = NaN  # the attribution estimate of loss_zero (atlases made by triage)
    loss_zero: float = NaN
    loss_zero_lo: float = NaN
    loss_zero_hi: float = NaN
    accuracy_zero: float = NaN  # accuracy change
    loss_mean: float = NaN
    loss_mean_lo: float = NaN
    loss_mean_hi: float = NaN
    accuracy_mean: float = NaN
    loss_resample: float = NaN  # a language model: the activity of another sequence (Resample, seeded)
    loss_resample_lo: float = NaN
    loss_resample_hi: float = NaN
    accuracy_resample: float = NaN
    sign_disagree: bool = False
    class_loss_zero: tuple[float, ...] = ()
    class_loss_zero_lo: tuple[float, ...] = ()
    class_loss_zero_hi: tuple[float, ...] = ()
    class_accuracy_zero: tuple[float, ...] = ()  # accuracy change on each class's examples
    class_loss_mean: tuple[float, ...] = ()
    class_accuracy_mean: tuple[float, ...] = ()
    next_tokens: tuple[int, ...] = ()  # a language model: target tokens whose loss rises most (zero)
    next_token_loss: tuple[float, ...] = ()  # their summed loss change over the data
    direct_zero: float = NaN  # a language model: next-token loss change through the residual stream alone
    # c. what it pushes the output towards
    push: tuple[float, ...] = ()  # per output class
    promotes: tuple[int, ...] = ()  # a language model: tokens whose logits its output raises most
    promotes_by: tuple[float, ...] = ()  # by how much, per unit of its activity
    suppresses: tuple[int, ...] = ()  # tokens it lowers most
    suppresses_by: tuple[float, ...] = ()
    push_path: str = ""
    # d. who backs it up
    partners: tuple[str, ...] = ()  # units paired with it, largest |interaction| first
    partner_pair: tuple[float, ...] = ()  # loss change with both deleted
    partner_interaction: tuple[float, ...] = ()  # pair - (single + single): > 0 redundancy, < 0 synergy
    pairs_tried: int = 0
    pairs_how: str = ""
    compensators: tuple[str, ...] = ()  # units whose mean activity changes most when it is deleted
    compensation: tuple[float, ...] = ()  # their mean activity change (lesioned - intact)
    # e. its role in words
    role: str = ""
    role_rule: str = ""
    # f. scores that let an explanation fail
    explanation: str = ""
    simulation: float = NaN  # Pearson r of predicted and real activity on held-out examples
    causal_class: int = -1  # the class its explanation names, if any
    causal_token: int = -1  # a language model: the token it is named for (its preferred token)
    causal_named: float = NaN  # class (token) loss change with the layer's units naming it deleted
    causal_random: float = NaN  # the same with as many random units of the layer (mean over draws)
    causal_lo: float = NaN  # 95% interval of named - random over the random draws
    causal_hi: float = NaN
    causal_size: int = 0
    # memorisation (corrupted-label training): effect on the changed examples and on the others
    mem_changed: float = NaN
    mem_changed_lo: float = NaN
    mem_changed_hi: float = NaN
    mem_kept: float = NaN
    mem_kept_lo: float = NaN
    mem_kept_hi: float = NaN
    memorisation: bool = False
    omissions: tuple[str, ...] = field(default=())

    def row(self) -> dict:
        """The card as one table row: tuples as lists (every field is flat: no deep copy is needed)."""
        return {k: list(v) if isinstance(v, tuple) else v for k in CARD_FIELDS for v in (getattr(self, k),)}


CARD_FIELDS = tuple(f.name for f in fields(Card))
