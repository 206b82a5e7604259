"""``lesion reproduce`` end to end on the tiny profile: files, claims, resume after SIGKILL, workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from lesion.errors import LesionError
from lesion.experiments.figures import FIGURES
from lesion.experiments.profiles import get_profile
from lesion.report.reproduce import reproduce, select

ROOT = Path(__file__).resolve().parents[1]
CLAIM_IDS = ["F1", "F2", "F3", "F4a", "F4a-sgd", "F4b", "F4c", "F5a", "F5b", "F6", "F7", "F7-conv",
             "size-study", "zhou-class-drops", "amjad-info-order", "leavitt-selectivity-reg", "bau-rotation",
             "meyes-recovery", "bau-class-units", "T1-neurons", "T1-heads", "T2-neurons", "T2-heads",
             "T3", "T3-optimal", "T3-F7", "T4", "ROLES-none", "ROLES-memorisation", "ROLES-simulation",
             "ROLES-necessity"]  # fmt: skip
KEYS = {"id", "claim", "paper", "measured", "statistic", "holds", "verdict", "estimate", "ci_low", "ci_high",
        "n", "needed_n", "tests"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tiny")
    return out, reproduce("tiny", out=out, workers=1)


def tables(out: Path) -> dict[str, pd.DataFrame]:
    return {p.name: pd.read_parquet(p) for p in sorted((out / "tables").glob("*.parquet"))}


def assert_same_tables(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        pd.testing.assert_frame_equal(a[name].drop(columns="seconds", errors="ignore"),
                                      b[name].drop(columns="seconds", errors="ignore"), obj=name)  # fmt: skip


def test_run_directory_has_every_part(tiny_run):
    out, manifest = tiny_run
    claims = json.loads((out / "claims.json").read_text())
    assert [c["id"] for c in claims] == CLAIM_IDS
    for c in claims:
        assert set(c) == KEYS
        assert isinstance(c["holds"], bool) and c["measured"] and c["paper"]
        assert c["verdict"] in ("holds", "does not hold", "inconclusive") and c["holds"] == (
            c["verdict"] == "holds"
        )
        assert c["tests"] and c["n"] == c["tests"][0]["n"]
        # n = 0 only where there was nothing to measure (tiny's untrained convnet has no class detector
        # for ROLES-necessity): then there is no estimate and the verdict is inconclusive
        assert c["n"] > 0 or (c["estimate"] is None and c["verdict"] == "inconclusive")
        if c["ci_low"] is not None:
            assert c["ci_low"] <= c["estimate"] <= c["ci_high"]
    for f in FIGURES:
        assert (out / "figures" / f"{f.id}.png").stat().st_size > 10_000
        assert (out / "figures" / f"{f.id}.svg").read_text().lstrip().startswith("<?xml")
    assert {p.name.split("_")[0] for p in (out / "tables").glob("*.parquet")} == {f.id for f in FIGURES}
    models = sorted((out / "models").glob("*.safetensors"))
    assert models and {p.name for p in models} == set(manifest["models"])
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["profile"]["name"] == "tiny" and on_disk["versions"]["torch"]
    assert on_disk["jobs"]["computed"] == on_disk["jobs"]["total"] > 40
    assert all(j["seconds"] >= 0 and j["figures"] for j in on_disk["timing"]["jobs"])
    assert {j["device"] for j in on_disk["timing"]["jobs"]} == {"cpu"}
    load = on_disk["machine"]["load"]
    assert len(load["start"]) == len(load["end"]) == 3


def test_report_is_self_contained(tiny_run):
    out, _ = tiny_run
    page = (out / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == len(FIGURES)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for cid in CLAIM_IDS:
        assert f">{cid}<" in page or f">{cid}: " in page
    assert "95% interval" in page and "Machine load" in page
    md = (out / "report.md").read_text()
    assert md.count("](figures/") == len(FIGURES) and "| F1 |" in md
    claims = json.loads((out / "claims.json").read_text())
    for c in claims:  # every decided and open interval is printed
        if c["ci_low"] is not None:
            assert f"[{c['ci_low']:.3g}, {c['ci_high']:.3g}]" in page


def test_rerun_reuses_everything(tiny_run, tmp_path):
    out, _ = tiny_run
    before = tables(out)
    again = reproduce("tiny", out=out, workers=1)
    assert again["jobs"]["computed"] == 0 and again["jobs"]["reused"] == again["jobs"]["total"]
    assert_same_tables(before, tables(out))


def test_workers_give_the_same_tables(tiny_run, tmp_path):
    out, _ = tiny_run
    reproduce("tiny", out=tmp_path, workers=2, only="F1,F4b,zhou-class-drops")
    mine = tables(tmp_path)
    assert mine and {n.split("_")[0] for n in mine} == {"F1", "F4a", "zhou-class-drops"}
    assert_same_tables(mine, {n: df for n, df in tables(out).items() if n in mine})


def test_sigkill_midway_then_resume(tiny_run, tmp_path):
    out, manifest = tiny_run
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lesion.cli", "reproduce", "--profile", "tiny", "--out", str(killed),
           "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and len(list((killed / "jobs").glob("[!.]*"))) < 12:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (killed / "jobs").glob("[!.]*")}
    assert 12 <= len(finished) < manifest["jobs"]["total"], "the kill must land midway"
    assert not (killed / "claims.json").exists()

    resumed = reproduce("tiny", out=killed, workers=1)
    assert resumed["jobs"]["reused"] == len(finished)
    assert resumed["jobs"]["computed"] == manifest["jobs"]["total"] - len(finished)
    for name, mtime in finished.items():  # finished work was not redone
        assert (killed / "jobs" / name).stat().st_mtime_ns == mtime
    assert not list((killed / "jobs").glob(".tmp-*"))
    assert_same_tables(tables(killed), tables(out))


def test_decided_verdicts_survive_another_thread_count(tiny_run, tmp_path):
    """Two torch threads per job round floats differently from one (different reduction order), as
    another CPU does: a verdict may turn inconclusive, but none may flip between holds and does not hold."""
    out, _ = tiny_run
    reproduce("tiny", out=tmp_path, workers=1, threads=2)
    one = {c["id"]: c for c in json.loads((out / "claims.json").read_text())}
    two = {c["id"]: c for c in json.loads((tmp_path / "claims.json").read_text())}
    assert one.keys() == two.keys()
    decided = [k for k in one if "inconclusive" not in (one[k]["verdict"], two[k]["verdict"])]
    assert decided, "some claims must be decided in both runs"
    assert {k: one[k]["verdict"] for k in decided} == {k: two[k]["verdict"] for k in decided}


def test_cuda_without_a_gpu_is_refused_up_front(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(LesionError, match="device='cuda' is not usable here"):
        reproduce(replace(get_profile("tiny"), device="cuda"), out=tmp_path, only="F1")
    assert not (tmp_path / "jobs").exists() or not list((tmp_path / "jobs").iterdir())


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")
def test_cuda_profile_trains_and_measures_on_the_gpu(tmp_path):
    manifest = reproduce(replace(get_profile("tiny"), device="cuda"), out=tmp_path, only="F1,meyes-recovery")
    assert {j["device"] for j in manifest["timing"]["jobs"]} == {"cuda"}
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert [c["id"] for c in claims] == ["F1", "meyes-recovery"]


def test_select_names_figures():
    assert [f.id for f in select("F4b,F7-conv,F1")] == ["F4a", "F7", "F1"]
    assert [f.id for f in select("F4a-sgd,size-study")] == ["F4a", "size-study"]
    with pytest.raises(LesionError, match="unknown figure F9; expected some of F1"):
        select("F1,F9")
    with pytest.raises(LesionError, match="unknown profile 'huge'"):
        reproduce("huge", out="unused")


def test_cli_reports_bad_profile(tmp_path):
    res = subprocess.run([sys.executable, "-m", "lesion.cli", "reproduce", "--profile", "huge", "--out",
                          str(tmp_path)], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert res.returncode == 2 and "error: unknown profile 'huge'" in res.stderr


def test_cli_device_flag_reaches_the_profile(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cmd = [sys.executable, "-m", "lesion.cli", "reproduce", "--profile", "tiny", "--device", "cuda",
           "--only", "F1", "--out", str(tmp_path)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "device='cuda' is not usable here" in res.stderr
