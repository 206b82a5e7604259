"""ROLES, beyond the paper: the role of every unit (``lesion.roles``) in the networks the paper's studies
train, with four claims fixed before any run (``roles_claims``; docs/paper.md lists them and their rules).

Networks: Figure 1's MLPs (every corruption level and seed: the same jobs, so the same networks), their
cards made on the training examples with the labels each was trained on (Figure 1's measurement) with the
memorisation parts against the true labels; and F7's batch-norm convnet, its cards made on held-out
images, whose atlas (``atlas.html``) the report links. Sizes of this study (``ROLES.size(profile, key)``,
declared in ``ROLES.sizes``): ``examples`` (training examples the MLPs' cards are made on; None: the
profile's ``curve_examples``, where F1 reads its curves), ``conv_examples`` (held-out images of the convnet's
cards, the first n; default all), ``pairs`` (units with pair lesions in the convnet's atlas, default 16),
``mlp_pairs`` (the same for the MLPs, default 0: no claim reads them), ``draws`` (random sets of the
necessity test, default 8).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lesion.experiments import jobs_roles as _jobs_roles  # noqa: F401  (registers the job kind)
from lesion.experiments.figures.common import Figure, Job, Outcome, Outputs, final_metrics, read
from lesion.experiments.figures.corruption import _corruption_nets
from lesion.experiments.figures.roles_claims import (
    memorisation_claim,
    necessity_claim,
    no_role_claim,
    simulation_claim,
)
from lesion.experiments.figures.roles_plot import draw_roles
from lesion.experiments.figures.units import f7_nets
from lesion.experiments.profiles import Profile

ID = "ROLES"
COLUMNS = [
    "unit", "layer", "index", "kind", "role_rule", "role", "dead", "loss_zero", "loss_zero_lo",
    "loss_zero_hi", "accuracy_zero", "selectivity", "preferred_class", "mutual_info", "explanation",
    "simulation", "causal_class", "causal_named", "causal_random", "causal_lo", "causal_hi", "causal_size",
    "mem_changed", "mem_changed_lo", "mem_changed_hi", "mem_kept", "mem_kept_lo", "mem_kept_hi",
    "memorisation",
]  # fmt: skip


def _mlp(c: float, s: int) -> str:
    return f"mlp/corrupt{c:g}/seed{s}"


def roles_jobs(p: Profile) -> dict[str, Job]:
    mlp = {"split": "train", "pair_units": int(ROLES.size(p, "mlp_pairs")), "seed": 0}
    mlp |= {"causal_draws": int(ROLES.size(p, "draws"))}
    n = ROLES.size(p, "examples")
    n = p.curve_examples if n is None else n
    if n is not None:
        mlp["examples"] = int(n)
    conv = {"split": "test", "pair_units": int(ROLES.size(p, "pairs")), "seed": 0, "atlas": True}
    conv |= {"causal_draws": int(ROLES.size(p, "draws"))}
    m = ROLES.size(p, "conv_examples")
    if m is not None:
        conv["examples"] = int(m)
    nets = _corruption_nets(p)
    jobs = {_mlp(c, s): Job("roles", mlp, {"model": net}) for (c, s), net in nets.items()}
    jobs |= {f"train/{_mlp(c, s)}": net for (c, s), net in nets.items()}
    convnet = f7_nets(p)["convnet"]
    return jobs | {"convnet": Job("roles", conv, {"model": convnet}), "train/convnet": convnet}


def roles_analyse(p: Profile, out: Outputs) -> Outcome:
    nets = sorted(_corruption_nets(p))
    frames = [_cards(out, _mlp(c, s), "mlp", c, s) for c, s in nets]
    conv = _cards(out, "convnet", "convnet", 0.0, int(f7_nets(p)["convnet"].params["seed"]))
    units = pd.concat([*frames, conv], ignore_index=True)
    networks = _networks(out, units, nets)
    roles = (
        units.groupby(["net", "corrupt", "seed", "role_rule"], as_index=False, sort=True)
        .size()
        .rename(columns={"size": "count"})
    )
    roles["share"] = roles["count"] / roles.groupby(["net", "corrupt", "seed"])["count"].transform("sum")
    necessity = necessity_sets(units[units.net == "convnet"])
    claims = [
        no_role_claim(units[units.net == "mlp"]),
        memorisation_claim(units[units.net == "mlp"]),
        simulation_claim(units),
        necessity_claim(necessity),
    ]
    atlas = out["convnet"] / "atlas" / "atlas.html"
    links = pd.DataFrame(
        {
            "text": [f"the atlas of the convnet's {int((units.net == 'convnet').sum())} units"],
            "href": [f"{out['convnet'].parent.name}/{out['convnet'].name}/atlas/atlas.html"],
        }
    )
    if not atlas.is_file():
        links = links.iloc[:0]
    tables = {"units": units, "networks": networks, "roles": roles, "necessity": necessity, "links": links}
    return Outcome(tables, claims)


def _cards(out: Outputs, name: str, net: str, corrupt: float, seed: int) -> pd.DataFrame:
    df = read(out, name, "roles.parquet")[COLUMNS].copy()
    df.insert(0, "seed", seed)
    df.insert(0, "corrupt", float(corrupt))
    df.insert(0, "net", net)
    lo, hi = df["loss_zero_lo"], df["loss_zero_hi"]
    df["no_role"] = ~((lo > 0) | (hi < 0))  # the effect's interval contains 0 (or was not measured)
    return df


def _networks(out: Outputs, units: pd.DataFrame, nets) -> pd.DataFrame:
    rows = []
    for (net, c, s), g in units.groupby(["net", "corrupt", "seed"], sort=True):
        name = "train/convnet" if net == "convnet" else f"train/{_mlp(c, s)}"
        measured = g["mem_changed"].notna().any()
        rows.append(
            {
                "net": net,
                "corrupt": c,
                "seed": s,
                "units": len(g),
                "no_role": float(g["no_role"].mean()),
                "memorisation": float(g["memorisation"].mean()) if measured else np.nan,
                "detectors": int((g["role_rule"] == "class detector").sum()),
                **final_metrics(out, name),
            }
        )
    return pd.DataFrame(rows)


def necessity_sets(cards: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, class) set of the necessity test (the units whose explanation names the
    class), from the cards: its class-c loss change, that of as many random units (mean over draws), the
    95% interval of the difference, its size, and how many of its units the cards call class detectors."""
    named = cards[cards["causal_class"] >= 0]
    rows = []
    for (layer, c), g in named.groupby(["layer", "causal_class"], sort=False):
        first = g.iloc[0]
        rows.append(
            {
                "layer": layer,
                "class": int(c),
                "size": int(first["causal_size"]),
                "named": float(first["causal_named"]),
                "random": float(first["causal_random"]),
                "difference": float(first["causal_named"] - first["causal_random"]),
                "lo": float(first["causal_lo"]),
                "hi": float(first["causal_hi"]),
                "detectors": int((g["role_rule"] == "class detector").sum()),
            }
        )
    unscored = cards[(cards["role_rule"] == "class detector") & (cards["causal_class"] < 0)]
    for (layer, c), g in unscored.groupby(["layer", "preferred_class"], sort=False):  # no causal score
        nan = float("nan")  # (more units name the class than the layer has others to draw from)
        rows.append({"layer": layer, "class": int(c), "size": 0, "named": nan, "random": nan,
                     "difference": nan, "lo": nan, "hi": nan, "detectors": len(g)})  # fmt: skip
    cols = ["layer", "class", "size", "named", "random", "difference", "lo", "hi", "detectors"]
    return pd.DataFrame(rows, columns=cols)


ROLES = Figure(
    ID,
    "The role of every unit",
    "beyond the paper: cards for every unit (Bills et al. 2023; Bau et al. 2020; Maini et al. 2023)",
    roles_jobs,
    roles_analyse,
    draw_roles,
    sizes={"examples": None, "conv_examples": None, "pairs": 16, "mlp_pairs": 0, "draws": 8},
)
