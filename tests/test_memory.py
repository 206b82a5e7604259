"""Memory-aware batching: a budget sizes the batches and is never exceeded; out-of-memory retries smaller."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lesion
from lesion.analyses import memory
from lesion.errors import DataError, LesionError

SRC = str(Path(__file__).resolve().parents[1] / "src")


def mlp_data():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(200, 8)
    return net.eval(), (x, torch.arange(200) % 4)


def test_parse_bytes():
    assert memory.parse_bytes("4GB") == 4_000_000_000
    assert memory.parse_bytes("512 MiB") == 512 << 20
    assert memory.parse_bytes("1.5g") == 1_500_000_000 and memory.parse_bytes(1024) == 1024
    for bad in ("lots", "4 parsecs", 0, -5, True):
        with pytest.raises(LesionError, match="max_memory"):
            memory.parse_bytes(bad)


def test_a_budget_below_one_example_is_refused():
    net, data = mlp_data()
    held = memory.resident()
    with pytest.raises(LesionError, match=r"below one example.*expected at least"):
        lesion.sweep(net, data, ["1:0"], max_memory=held // 2)


def test_budget_sizes_the_batch_and_keeps_the_numbers(monkeypatch):
    net, data = mlp_data()
    units = [f"{layer}:{j}" for layer in ("1", "3") for j in range(32)]
    free = lesion.sweep(net, data, units)
    per = memory.example_bytes(net, data)
    assert per == 4 * (
        32 * 4 + 4 * 3
    )  # (Linear, ReLU) x 2 of width 32; the last Linear, the Sequential, the output
    monkeypatch.setattr(memory, "resident", lambda: 1 << 30)  # the process's size, held still
    need = int(memory.FACTOR * per)
    df = lesion.sweep(net, data, units, max_memory=(1 << 30) + memory.RESERVE + 10 * need)
    assert df.attrs["memory"]["batch_size"] == 7  # ten examples' room, a quarter kept for the engine's cache
    np.testing.assert_allclose(df["loss"], free["loss"], rtol=1e-5)
    assert free.attrs["memory"]["batch_size"] == 1000  # the machine's memory does not shrink a small model


def oom() -> RuntimeError:
    return RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)"
    )


def test_an_out_of_memory_in_the_engine_retries_with_half_the_batch(monkeypatch):
    net, data = mlp_data()
    units = [f"1:{j}" for j in range(32)]
    want = lesion.sweep(net, data, units, batch_size=64)
    import lesion.backends.ray_sweep as shard

    real, calls = shard.evaluate_lesions, []

    def once(runner, lesions, **kw):
        calls.append(runner.batch_size)
        if len(calls) == 1:
            raise oom()
        return real(runner, lesions, **kw)

    monkeypatch.setattr(shard, "evaluate_lesions", once)
    got = lesion.sweep(net, data, units, batch_size=64)
    assert calls == [64, 32]
    assert got.attrs["memory"]["retries"] == 1 and got.attrs["memory"]["batch_size"] == 32
    np.testing.assert_allclose(got["delta_loss"], want["delta_loss"], rtol=1e-5, atol=1e-7)


class Greedy(nn.Module):
    """An MLP that 'runs out of memory' on batches of more than 16 examples (as torch's allocator says)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc, self.act, self.out = nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)

    def forward(self, x):
        if x.shape[0] > 16:
            raise oom()
        return self.out(self.act(self.fc(x)))


def test_out_of_memory_on_the_slow_path_halves_until_it_fits():
    x, y = torch.randn(40, 8), torch.arange(40) % 4
    net = Greedy().eval()
    got = lesion.sweep(net, (x[:16], y[:16]), ["act:0"], engine=False, batch_size=16)
    assert got.attrs["memory"].get("retries", 0) == 0
    df = lesion.sweep(net, (x, y), ["act:0", "act:3"], engine=False, batch_size=64)
    assert df.attrs["memory"]["retries"] == 2 and df.attrs["memory"]["batch_size"] == 16
    with lesion.ablate(net, "act:3"), torch.no_grad():
        loss = sum(float(nn.functional.cross_entropy(net(x[i : i + 8]), y[i : i + 8], reduction="sum"))
                   for i in range(0, 40, 8)) / 40  # fmt: skip
    assert df["loss"].iloc[1] == pytest.approx(loss, rel=1e-6)


def test_other_errors_are_not_retried():
    class Broken(Greedy):
        def forward(self, x):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    x = torch.randn(8, 8)
    with pytest.raises(DataError, match="shapes cannot"):
        lesion.sweep(Broken(), (x, torch.zeros(8, dtype=torch.long)), ["act:0"], engine=False, sites=[])
    assert memory.out_of_memory(DataError("batch 0")) is False
    wrapped = DataError("batch 3: the model failed")
    wrapped.__cause__ = oom()
    assert memory.out_of_memory(wrapped) and memory.out_of_memory(MemoryError())


def test_gpt2_small_sweep_under_2gb_peaks_below_2gb():
    """A GPT-2-small-shaped model (GPT2Config defaults, random weights) in a fresh process: heads and
    neurons of the last block under max_memory='2GB'; the peak RSS (ru_maxrss) stays under 2 GB."""
    pytest.importorskip("transformers")
    code = textwrap.dedent("""
        import json, resource, torch, transformers, lesion
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
        data = {"input_ids": torch.randint(0, 50257, (4, 16), generator=torch.Generator().manual_seed(0))}
        units = ["transformer.h.11.attn:0", "transformer.h.11.attn:5", "transformer.h.11.mlp.act:7"]
        df = lesion.sweep(model, data, units, metric=lesion.metrics.NextTokenLoss(), max_memory="2GB")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"peak": peak, "memory": df.attrs["memory"], "delta": df["delta_loss"].tolist()}))
    """)
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    print("\nGPT-2 small under max_memory=2GB:", got)
    assert got["peak"] < 2e9 and got["memory"]["budget"] == 2e9
    assert all(np.isfinite(got["delta"]))


def test_a_pass_of_the_prefix_engine_is_bounded_by_its_activations_not_only_its_output():
    """A classifier's output is small (1,000 x 10 logits): the output alone would allow 838 lesions a pass;
    the widest recorded tensor (1,000 x 17 x 32 floats, 2.2 MB) times the MLP's 4x bounds it at 256 MB."""
    from lesion.engine.prefix import EXPANSION, MAX_ACT_BYTES, _chunk

    cache = {"__output__": torch.zeros(1000, 10), "blocks.0": (torch.zeros(1000, 17, 32), None)}
    per_lesion = EXPANSION * 1000 * 17 * 32 * 4
    assert _chunk(cache, 800) == MAX_ACT_BYTES // per_lesion == 30
    assert _chunk(cache, 5) == 5  # fewer lesions than fit
    logits = {"__output__": torch.zeros(64, 128, 1024), "h.0": torch.zeros(64, 128, 256)}
    assert _chunk(logits, 32) == 1  # 32 MB of logits a lesion: one a pass, as before
