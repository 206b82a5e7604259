"""``lesion bench``: it runs, writes its JSON, and every method it times agreed with lesion first.

No timing assertions here: speed is what the benchmark measures, never what a test asserts.
"""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from lesion import bench
from lesion.cli import app
from lesion.core.sites import find_sites
from lesion.models import mlp

runner = CliRunner()
WORKLOAD_KEYS = {"seconds", "floor_seconds", "ratios", "max_abs_diff", "n_examples", "notes", "flops"}


def test_quick_bench_writes_json_and_every_method_agrees(tmp_path):
    out = tmp_path / "bench.json"
    figure = tmp_path / "scaling.png"
    args = [
        "bench",
        "--quick",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
        "--figure",
        str(figure),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "W1" in result.output and "hook_loop" in result.output
    r = json.loads(out.read_text())
    assert {"cpu", "cores", "torch", "threads", "date", "captum"} <= set(r["machine"])
    assert r["machine"]["threads"] == 1 and r["gemm"]["gflops"] > 0
    assert list(r["workloads"]) == ["W1", "W2", "W3", "W4", "W5", "W6", "W7", "S1"]
    captum = r["machine"]["captum"] is not None
    for name, peers in (("W1", ["hook_loop", "captum"]), ("W2", ["hook_loop"]), ("W3", ["captum"])):
        w = r["workloads"][name]
        assert set(w) >= WORKLOAD_KEYS, name
        assert w["seconds"]["lesion"] > 0 and w["floor_seconds"]["lesion"] > 0
        assert w["engine_fallbacks"] == {}, name  # the engine, not the reference path, was timed
        checked = [p for p in peers if p != "captum" or captum]
        assert sorted(w["max_abs_diff"]) == sorted(checked), name
        for diff in w["max_abs_diff"].values():
            assert diff["accuracy"] <= 1e-3 and diff["loss"] <= 1e-5
        for p in checked:
            assert w["seconds"][p] > 0 and f"{p}/lesion" in w["ratios"]
    assert r["workloads"]["W2"]["extrapolated"] is True
    assert 0 < r["workloads"]["W2"]["extrapolation"]["hook_loop"]["measured_fraction"] < 1
    assert r["workloads"]["W4"]["peak_mb"] > 0 and r["workloads"]["W4"]["peak_reset"] in (True, False)
    for name in ("W5", "W6"):  # transformers: every peer that imports was checked against lesion, then timed
        w = r["workloads"][name]
        available = [p for p, why in w["peers"].items() if why == "available"]
        assert sorted(w["max_abs_diff"]) == sorted(["hook_loop", *available]), name
        for diff in w["max_abs_diff"].values():
            assert diff["loss"] <= 1e-5 and diff.get("accuracy", 0.0) <= 1e-3
        served = w["engine"]["served"]  # lesion's engines were timed: the prefix, or the closed-form block
        assert served["prefix"] + served.get("closed", 0) == w["n_lesions"], name
    assert r["workloads"]["W7"]["spearman"] > 0.9  # quick model: near-linear, so the estimate is close
    w7 = r["workloads"]["W7"]  # W5 ran in this bench: W7 reuses its exact sweep and its median time
    assert w7["exact_from"].startswith("W5")
    assert w7["seconds"]["exact"] == r["workloads"]["W5"]["seconds"]["lesion"]
    bf16 = r["workloads"]["W1"]["bf16"]  # timed, with its deviation from fp32 (bf16 keeps ~3 digits)
    assert bf16["seconds"] > 0 and bf16["engine_fallbacks"] == {}
    assert bf16["max_abs_diff_from_fp32"]["loss"] < 0.05 and bf16["max_abs_diff_from_fp32"]["accuracy"] < 0.05
    scans = r["workloads"]["S1"]["scans"]  # the scaling scans: every point timed and fitted
    assert scans["examples"]["sizes"] == [200, 400, 800] and scans["width"]["sizes"] == [16, 32, 64]
    for fit in scans.values():
        assert all(t > 0 for t in fit["seconds"]) and np.isfinite(fit["exponent"])
        assert all(p["engine_fallbacks"] == {} for p in fit["points"])
    assert [p["n_units"] for p in scans["width"]["points"]] == [32, 64, 128]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_without_the_scaling_scan_is_refused_before_any_timing(tmp_path):
    result = runner.invoke(app, ["bench", "--quick", "--only", "W1", "--figure", str(tmp_path / "f.png")])
    assert result.exit_code == 2 and "expected S1 among the workloads" in result.output
    assert not (tmp_path / "f.png").exists()


def test_without_captum_its_columns_are_skipped_and_said_so(monkeypatch):
    tiny = dataclasses.replace(bench.QUICK, examples=200, units=4, conv_examples=20, conv_channels=2)
    monkeypatch.setattr(bench, "QUICK", tiny)
    monkeypatch.setattr(bench._common, "_captum_version", lambda: None)  # what every workload asks
    r = bench.run(quick=True, repeats=1, threads=1, only=["w3", "W1"])
    assert list(r["workloads"]) == ["W1", "W3"]
    for w in r["workloads"].values():
        assert w["captum"] == bench._captum_missing() and w["seconds"]["captum"] is None
        assert "captum" not in w["max_abs_diff"]
    console = Console(file=io.StringIO(), width=200)
    console.print(bench.table(r))
    assert "skipped: no captum" in console.file.getvalue()


def test_unknown_workload_is_a_user_error():
    result = runner.invoke(app, ["bench", "--quick", "--only", "W1,W99"])
    assert result.exit_code == 2
    assert "W99" in result.output and "W1, W2, W3, W4" in result.output


def test_a_method_that_disagrees_is_refused():
    ref = np.array([[0.9, 0.8], [0.3, 0.5]])  # accuracy, loss of two lesions
    diff = bench._agree("m", ref, ref + np.array([[0.001], [1e-6]]), n=1000)  # one example flipped
    assert diff == pytest.approx({"accuracy": 0.001, "loss": 1e-6})
    with pytest.raises(bench.Mismatch, match="accuracy differs"):
        bench._agree("m", ref, ref + np.array([[0.002], [0.0]]), n=1000)  # two examples in 1,000 flipped
    with pytest.raises(bench.Mismatch):
        bench._agree("m", ref, ref + np.array([[0.0], [1e-3]]), n=1000)


def test_flops_of_the_mlp_counted_by_hand():
    model = mlp((1, 28, 28), [512, 512], 10, seed=0).eval()
    x = torch.zeros(1, 1, 28, 28)
    costs = bench.site_costs(model, find_sites(model, torch.zeros(2, 1, 28, 28)), x)
    full = 2 * (784 * 512 + 512 * 512 + 512 * 10)
    assert costs["relu1"] == bench._SiteCost(
        full=full, prefix=2 * (784 * 512 + 512 * 512), per_lesion=2 * 512 + 2 * 512 * 10,
        later=2 * (512 * 512 + 512 * 10),
    )  # fmt: skip  # rank-1 update of fc2's output, then the output layer
    assert costs["relu2"] == bench._SiteCost(full, full, 2 * 10, 2 * 512 * 10)  # rank-1 update of out
    flops = bench.single_flops(costs, [("relu1", 0), ("relu2", 0), ("relu2", 1)], n=10)
    assert flops["hook_loop"] == 3 * 10 * full
    assert flops["captum"] == (3 + 2 * 2) * 10 * full
    assert flops["lesion"] == 5 * 10 * full + 10 * (costs["relu1"].prefix + full) + 10 * (
        costs["relu1"].per_lesion + 2 * costs["relu2"].per_lesion
    )


def test_quiet_machine_protocol_retimes_busy_runs_and_withholds_their_ratios(monkeypatch):
    """A run during which other processes kept a core more busy than the quietest run is re-timed; a
    method that never got a quiet run is 'unsteady' and no ratio is reported against it."""
    import numpy as np

    from lesion.bench import _common
    from lesion.bench._common import QUICK, _bench, _Context, _summary

    ctx = _Context(QUICK, repeats=1, threads=1, progress=False)
    loads = iter([0.1, 2.5, 0.3, 3.0, 3.0, 3.0, 3.0])  # lesion quiet; peer A busy then quiet; peer B busy
    monkeypatch.setattr(_common, "other_load", lambda: lambda: next(loads))
    result = np.zeros((2, 1))

    def fn(items, bar):
        return result

    lesion_t, _, _ = _bench(ctx, "lesion", fn, [0], [], 1, 1)
    a_t, _, _ = _bench(ctx, "A", fn, [0], [], 1, 1)
    b_t, _, _ = _bench(ctx, "B", fn, [0], [], 1, 1)
    assert lesion_t.steady and a_t.steady and not b_t.steady
    assert a_t.loads == [0.3] and [r["method"] for r in ctx.retimed] == ["A", "B", "B", "B"]
    s = _summary(ctx, {"lesion": lesion_t, "A": a_t, "B": b_t}, {"lesion": 1.0})
    assert s["ratios"]["A/lesion"] is not None and s["ratios"]["B/lesion"] is None
    assert s["unsteady"] == ["B"]
