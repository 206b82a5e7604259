"""The ROLES study of ``lesion reproduce`` (the role of every unit): it runs end to end in the tiny
profile and writes its tables, its four claims with verdicts, its figure and the convnet's atlas, linked
from the report; it shares its networks with F1 and F7; its claims keep the criteria fixed before the
first run; and its statistics behave on planted tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lesion.experiments import plan
from lesion.experiments.figures.corruption import f1_jobs
from lesion.experiments.figures.roles import ROLES, necessity_sets, roles_jobs
from lesion.experiments.figures.roles_claims import memorisation_claim, necessity_claim, no_role_claim
from lesion.experiments.figures.units import f7_nets
from lesion.experiments.profiles import get_profile
from lesion.report.reproduce import reproduce
from lesion.util.outputs import read_manifest

IDS = ["ROLES-none", "ROLES-memorisation", "ROLES-simulation", "ROLES-necessity"]
# the criteria written before the study was first run: (statistic direction, criterion) of each test
CRITERIA = {
    "ROLES-none": [("<", 0.0), (">", 0.0)],
    "ROLES-memorisation": [(">", 0.0)],  # tiny has one level between 0 and 100%: the rho check alone
    "ROLES-simulation": [("within", 0.5), ("within", 0.5)],
    "ROLES-necessity": [(">", 0.0)],
}
TABLES = {"units", "networks", "roles", "necessity", "links"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("roles-study")
    return out, reproduce("tiny", only="ROLES", out=out, workers=1)


def test_tiny_run_writes_tables_claims_figure_and_atlas(run):
    out, manifest = run
    assert manifest["figures"] == ["ROLES"]
    assert {p.stem.removeprefix("ROLES_") for p in (out / "tables").glob("ROLES_*.parquet")} == TABLES
    claims = json.loads((out / "claims.json").read_text())
    assert [c["id"] for c in claims] == IDS
    for c in claims:
        assert c["verdict"] in ("holds", "does not hold", "inconclusive") and c["measured"] and c["paper"]
        assert [(t["direction"], t["criterion"]) for t in c["tests"]] == CRITERIA[c["id"]], c["id"]
        if c["ci_low"] is not None:
            assert c["ci_low"] <= c["estimate"] <= c["ci_high"]
    assert (out / "figures" / "ROLES.png").stat().st_size > 10_000
    links = pd.read_parquet(out / "tables" / "ROLES_links.parquet")
    href = links.href.iloc[0]
    atlas = out / href
    assert href.startswith("jobs/") and atlas.name == "atlas.html" and atlas.is_file()
    assert set(read_manifest(atlas.parent)["files"]) == {"roles.parquet", "cards.json", "atlas.html"}
    page = (out / "report.html").read_text()
    assert f"href='{href}'" in page and "ROLES: The role of every unit" in page
    assert f"]({href})" in (out / "report.md").read_text()
    cards = pd.read_parquet(atlas.parent / "roles.parquet")
    units = pd.read_parquet(out / "tables" / "ROLES_units.parquet")
    assert sorted(cards.unit) == sorted(units[units.net == "convnet"].unit)


def test_units_and_networks_tables_agree_with_the_cards(run):
    out, _ = run
    units = pd.read_parquet(out / "tables" / "ROLES_units.parquet")
    nets = pd.read_parquet(out / "tables" / "ROLES_networks.parquet")
    p = get_profile("tiny")
    mlp = units[units.net == "mlp"]
    assert sorted(mlp.corrupt.unique()) == list(p.corruptions)
    assert (mlp.groupby(["corrupt", "seed"]).size() == sum(p.widths)).all()
    contains_zero = ~((units.loss_zero_lo > 0) | (units.loss_zero_hi < 0))
    assert (units.no_role == contains_zero).all()
    clean = mlp[mlp.corrupt == 0.0]
    assert clean.mem_changed.isna().all() and not clean.memorisation.any()  # nothing was mislabeled
    assert mlp[mlp.corrupt > 0].mem_changed.notna().all()
    for r in nets.itertuples():
        g = units[(units.net == r.net) & (units.corrupt == r.corrupt) & (units.seed == r.seed)]
        assert r.units == len(g) and r.no_role == pytest.approx(g.no_role.mean())
    roles = pd.read_parquet(out / "tables" / "ROLES_roles.parquet")
    assert roles.groupby(["net", "corrupt", "seed"])["share"].sum().round(12).eq(1).all()


@pytest.mark.slow  # two OpenMP threads per job on a loaded 2-core machine: about 2 minutes
def test_decided_verdicts_survive_two_threads(run, tmp_path):
    out, _ = run
    reproduce("tiny", only="ROLES", out=tmp_path, workers=1, threads=2)
    one = {c["id"]: c["verdict"] for c in json.loads((out / "claims.json").read_text())}
    two = {c["id"]: c["verdict"] for c in json.loads((tmp_path / "claims.json").read_text())}
    decided = [k for k in one if "inconclusive" not in (one[k], two[k])]
    assert {k: one[k] for k in decided} == {k: two[k] for k in decided}


@pytest.mark.parametrize("profile", ["tiny", "quick", "standard", "paper"])
def test_the_study_reads_the_networks_of_f1_and_f7(profile):
    p = get_profile(profile)
    jobs = roles_jobs(p)
    f1 = {j.key for j in plan(list(f1_jobs(p).values())) if j.kind == "train"}
    mine = {j.deps["model"].key for name, j in jobs.items() if name.startswith("mlp/")}
    assert mine == f1 and len(mine) == len(p.corruptions) * len(p.seeds)
    assert jobs["convnet"].deps["model"].key == f7_nets(p)["convnet"].key
    assert all(j.kind == "roles" for n, j in jobs.items() if not n.startswith("train/"))
    assert ROLES.jobs is roles_jobs


def _planted(shares: dict[float, float], n: int = 200, col: str = "no_role") -> pd.DataFrame:
    rows = []
    for c, share in shares.items():
        for seed in (0, 1):
            k = round(share * n)
            rows += [{"corrupt": c, "seed": seed, col: i < k} for i in range(n)]
    return pd.DataFrame(rows)


def test_a_planted_fall_of_units_without_a_role_holds_and_a_rise_does_not():
    falls = no_role_claim(_planted({0.0: 0.6, 0.5: 0.4, 1.0: 0.1}))
    assert falls["verdict"] == "holds" and falls["estimate"] == pytest.approx(-1.0)
    rises = no_role_claim(_planted({0.0: 0.1, 0.5: 0.4, 1.0: 0.6}))
    assert rises["verdict"] == "does not hold"


def test_memorisation_is_read_between_0_and_100_percent_only():
    df = _planted({0.0: 0.0, 0.2: 0.05, 0.6: 0.3, 1.0: 0.0}, col="memorisation")
    c = memorisation_claim(df)
    assert c["verdict"] == "holds" and c["statistic"]["levels"] == [0.2, 0.6]  # 100% (back to 0) not read
    one = memorisation_claim(_planted({0.0: 0.0, 0.5: 0.3, 1.0: 0.0}, col="memorisation"))
    assert one["verdict"] == "inconclusive" and one["estimate"] is None and "two needed" in one["measured"]


def _sets(rows) -> pd.DataFrame:
    cards = []
    for i, (layer, c, diff, lo, hi, detector) in enumerate(rows):
        cards.append({"unit": f"{layer}:{i}", "layer": layer, "causal_class": c, "causal_size": 2,
                      "causal_named": diff + 0.1, "causal_random": 0.1, "causal_lo": lo, "causal_hi": hi,
                      "role_rule": "class detector" if detector else "selective, not needed",
                      "preferred_class": c})  # fmt: skip
    return necessity_sets(pd.DataFrame(cards))


def test_necessity_reads_the_detectors_sets():
    one = necessity_claim(_sets([("a", 1, 0.2, 0.05, 0.35, True), ("a", 2, -0.5, -0.9, -0.1, False)]))
    assert one["verdict"] == "holds" and (one["ci_low"], one["ci_high"]) == (0.05, 0.35)  # its own interval
    assert one["n"] == 1 and one["statistic"]["all_named_sets"] == 2
    two = necessity_claim(_sets([("a", 1, 0.2, 0.1, 0.3, True), ("b", 3, 0.4, 0.1, 0.7, True)]))
    assert two["verdict"] == "holds" and two["estimate"] == pytest.approx(0.3) and two["n"] == 2
    none = necessity_claim(_sets([("a", 1, 0.2, 0.1, 0.3, False)]))
    assert none["verdict"] == "inconclusive" and none["n"] == 0
    unscored = _sets([("a", -1, np.nan, np.nan, np.nan, True)])
    assert unscored.detectors.tolist() == [1] and np.isnan(unscored.difference.iloc[0])
