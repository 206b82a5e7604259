"""A study defined in a test file registers in one place (``register``) and runs in the tiny profile:
its jobs run and are stored, its tables, figure and claims reach the run directory and the report."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from lesion.errors import LesionError
from lesion.experiments import Job, kind
from lesion.experiments import figures as registry
from lesion.experiments.claims import Check, verdict
from lesion.experiments.figures.common import Figure, Outcome, claim
from lesion.experiments.profiles import get_profile
from lesion.report.reproduce import reproduce, select


@kind("toy-squares")
def _squares(params, inputs, out: Path) -> None:
    n = int(params["n"])
    pd.DataFrame({"k": range(n), "square": [k * k for k in range(n)]}).to_parquet(out / "squares.parquet")


def _jobs(p):
    return {"squares": Job("toy-squares", {"n": TOY.size(p, "n")})}


def _analyse(p, outputs):
    df = pd.read_parquet(outputs["squares"] / "squares.parquet")
    share = float((df.square == df.k**2).mean())
    check = Check("squares are squares", share, share, share, 0.5, ">", len(df), "rows", "exact",
                  verdict(share, share, 0.5, ">"), None)  # fmt: skip
    return Outcome({"squares": df}, [claim("toy", "k squared is k*k", "-", f"{len(df)} rows", {}, [check])])


def _draw(tables, stem: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot(tables["squares"].k, tables["squares"].square)
    path = stem.with_suffix(".png")
    fig.savefig(path)
    plt.close(fig)
    return [path]


TOY = Figure("toy", "A toy study", "this test", _jobs, _analyse, _draw, sizes={"n": 4})


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr(registry, "STUDIES", dict(registry.STUDIES))  # registered for this test only
    return registry.register(TOY)


def test_a_study_in_a_test_file_registers_in_one_place_and_runs(toy, tmp_path):
    assert select("toy") == [TOY] and registry.registered()[-1] is TOY
    assert TOY.size(get_profile("tiny"), "n") == 4  # the default the study declares
    sized = get_profile("tiny").resize("toy", n=6)  # the study's own size, from the profile
    manifest = reproduce(sized, only="toy", out=tmp_path / "run")
    out = tmp_path / "run"
    table = pd.read_parquet(out / "tables" / "toy_squares.parquet")
    assert table.square.tolist() == [0, 1, 4, 9, 16, 25]
    claims = json.loads((out / "claims.json").read_text())
    assert [(c["id"], c["verdict"]) for c in claims] == [("toy", "holds")]
    assert (out / "figures" / "toy.png").stat().st_size > 0
    assert "A toy study" in (out / "report.html").read_text()
    assert "toy" in json.dumps(manifest)


def test_registering_an_id_twice_is_refused(toy):
    with pytest.raises(LesionError, match="registered already"):
        registry.register(Figure("toy", "another", "-", _jobs, _analyse, _draw))
    with pytest.raises(LesionError, match=r"expected a lesion\.experiments\.figures\.Figure"):
        registry.register("toy")
