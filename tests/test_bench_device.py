"""``lesion bench --device/--precision``: the real-size workloads take them, everything else refuses them
before any timing, a missing GPU is a clear error, and the GPU rows read "not measured" until measured.

This machine has no GPU: the CUDA branches are checked through their option parsing and labels, and the
bf16 path of W8-W11 runs for real on the CPU (autocast), at the quick sizes.
"""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from lesion import bench
from lesion.bench import _real
from lesion.bench._common import QUICK, _Context
from lesion.cli import app
from lesion.errors import LesionError

runner = CliRunner()


def test_device_and_precision_are_checked_before_any_timing(monkeypatch):
    monkeypatch.setattr(bench, "_WORKLOADS", {})  # a workload that ran would raise KeyError
    with pytest.raises(LesionError, match="apply to the real-size workloads W8, W9, W10, W11"):
        bench.run(quick=True, only=["W1", "W8"], precision="bf16")
    with pytest.raises(LesionError, match="expected fp32 or bf16"):
        bench.run(quick=True, only=["W8"], precision="fp16")
    with pytest.raises(LesionError, match="expected cpu, cuda or cuda:N"):
        bench.run(quick=True, only=["W8"], device="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LesionError, match="no CUDA device here"):
        bench.run(quick=True, only=["W8"], device="cuda", precision="bf16")
    with pytest.raises(LesionError, match="no CUDA device here"):
        bench.run(quick=True, device="cuda:0")  # no --only: W8-W11 alone, then the device is missing
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(LesionError, match="has 1 CUDA devices"):
        bench.run(quick=True, only=["W9"], device="cuda:3")


def test_the_command_line_takes_and_refuses_them(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(
        app, ["bench", "--quick", "--device", "cuda", "--precision", "bf16", "--only", "W8"]
    )
    assert result.exit_code == 2 and "no CUDA device here" in result.output
    result = runner.invoke(app, ["bench", "--quick", "--precision", "fp16", "--only", "W8"])
    assert result.exit_code == 2 and "fp16" in result.output  # not one of the choices
    result = runner.invoke(app, ["bench", "--quick", "--precision", "bf16", "--only", "W3"])
    assert result.exit_code == 2 and "apply to the real-size workloads" in result.output


def test_default_workloads_follow_the_device():
    assert bench._choose(None) == bench.DEFAULT and "W8" not in bench.DEFAULT
    assert bench._choose(None, default=bench.REAL) == ("W8", "W9", "W10", "W11")


def test_bf16_real_workloads_run_on_the_cpu_and_say_the_gpu_is_not_measured():
    pytest.importorskip("transformers")
    r = bench.run(quick=True, repeats=1, threads=1, only=["W8", "W10"], precision="bf16")
    assert r["settings"]["device"] == "cpu" and r["settings"]["precision"] == "bf16"
    for name, w in r["workloads"].items():
        assert w["device"] == "cpu" and w["precision"] == "bf16", name
        assert w["gpu"]["status"] == "not measured" and "peak_gpu_mb" not in w, name
        assert w["max_abs_diff"]["hook_loop"]["loss"] < _real.TOLERANCE["bf16"] * 10, name
    console = Console(file=io.StringIO(), width=220)
    console.print(bench.table(r))
    text = console.file.getvalue()
    assert text.count("not measured") >= 2 and "lesion cuda bf16" in text


def test_a_gpu_run_is_labelled_measured_with_its_card(monkeypatch):
    ctx = _Context(QUICK, 1, 1, False, device="cuda", precision="bf16")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Test GPU")
    assert _real.gpu(ctx) == {"device": "cuda", "precision": "bf16", "status": "measured", "name": "Test GPU"}
    assert _real.gpu(_Context(QUICK, 1, 1, False)) == _real.GPU
    row = {"units_per_second": {"lesion": 10.0}, "peak_rss_mb": 100.0, "peak_gpu_mb": 2048.0,
           "gpu": _real.gpu(ctx)}  # fmt: skip
    from lesion.bench.table import _row_note

    assert _row_note(row, "lesion") == "10 units/s, peak 100 MB, GPU 2048 MB; on Test GPU, bf16"
