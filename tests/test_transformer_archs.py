"""lesion's own transformers (``gpt``, ``vit``): built from the arch dict, heads visible to the site
finder, saved and loaded through the model file, trained and analysed from the command line."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import lesion
from lesion.cli import app
from lesion.core.sites import find_sites
from lesion.data import builtin_tokens
from lesion.errors import DataError, LesionError
from lesion.models import build_model, load_model, save_model

runner = CliRunner()
GPT = {"kind": "gpt", "vocab_size": 20, "context": 12, "d_model": 16, "n_layer": 2, "n_head": 4}
VIT = {"kind": "vit", "input_shape": [1, 8, 8], "n_classes": 10, "patch": 4, "d_model": 16, "n_layer": 1,
       "n_head": 2}  # fmt: skip


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("arch", [GPT, VIT], ids=["gpt", "vit"])
def test_round_trip_through_the_model_file(arch, tmp_path):
    net = build_model(arch, seed=3)
    x = torch.randint(0, 20, (3, 12)) if arch["kind"] == "gpt" else torch.randn(3, 1, 8, 8)
    path = tmp_path / "m.safetensors"
    save_model(net, path, arch=arch, metadata={"note": "round trip"})
    back, info = load_model(path)
    assert info["arch"] == arch and not back.training
    with torch.no_grad():
        assert torch.equal(back(x), net.eval()(x))
    assert torch.equal(build_model(arch, seed=3).state_dict()["h.0.attn.c_attn.weight"],
                       net.state_dict()["h.0.attn.c_attn.weight"])  # fmt: skip  # seeded: same weights


def test_sites_are_heads_and_mlp_neurons():
    net = build_model(GPT, seed=0)
    sites = find_sites(net, {"input_ids": torch.zeros(2, 12, dtype=torch.long)})
    assert [(s.name, s.width, s.heads) for s in sites] == [
        ("h.0.attn", 4, True), ("h.0.mlp.act", 64, False), ("h.1.attn", 4, True), ("h.1.mlp.act", 64, False),
    ]  # fmt: skip
    assert sites[0].group == 4 and sites[0].target == "h.0.attn.c_proj"


def test_head_ablation_is_the_hand_sliced_projection_input():
    """Deleting head 2 of block 1 = zeroing channels 8..11 of the input of ``h.1.attn.c_proj``."""
    net = build_model(GPT, seed=1)
    ids = torch.randint(0, 20, (4, 12), generator=torch.Generator().manual_seed(0))

    def zero_head(module, args):
        z = args[0].clone()
        z[..., 8:12] = 0.0
        return (z,)

    handle = net.h[1].attn.c_proj.register_forward_pre_hook(zero_head)
    with torch.no_grad():
        by_hand = net(ids)
    handle.remove()
    with torch.no_grad(), lesion.ablate(net, "h.1.attn:head2"):
        ablated = net(ids)
    with torch.no_grad():
        intact = net(ids)
    assert torch.allclose(ablated, by_hand, atol=1e-6) and not torch.allclose(ablated, intact, atol=1e-3)


def test_gpt_is_causal_and_refuses_long_sequences():
    net = build_model(GPT, seed=0)
    a = torch.randint(0, 20, (1, 12), generator=torch.Generator().manual_seed(2))
    b = a.clone()
    b[0, 7:] = (b[0, 7:] + 1) % 20  # change the future only
    with torch.no_grad():
        assert torch.allclose(net(a)[0, :7], net(b)[0, :7], atol=1e-6)
    with pytest.raises(DataError, match="13 tokens; the model's context is 12"):
        net(torch.zeros(1, 13, dtype=torch.long))


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ({**GPT, "n_head": 3}, "not a multiple of n_head"),
        ({**VIT, "patch": 3}, "does not divide the image size"),
        ({**GPT, "vocab_size": 0}, "vocab_size"),
        ({**GPT, "dropout": 1.0}, "dropout"),
    ],
)
def test_bad_arch_values(arch, message):
    with pytest.raises(LesionError, match=message):
        build_model(arch)


def test_builtin_corpora_are_deterministic_and_learnable():
    a, vocab = builtin_tokens("markov", n=64, seq_len=16)
    assert np.array_equal(a, builtin_tokens("markov", n=64, seq_len=16)[0]) and vocab == 32
    pairs = {(int(x), int(y)) for row in a for x, y in itertools.pairwise(row)}
    successors = {x: {y for p, y in pairs if p == x} for x, _ in pairs}
    assert max(len(s) for s in successors.values()) <= 2  # at most 2 successors: loss can reach log 2
    with pytest.raises(DataError, match="unknown token corpus 'nope'"):
        builtin_tokens("nope")


@pytest.fixture(scope="module")
def gpt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gpt") / "g.safetensors"
    result = invoke("train", "--arch", "gpt", "--epochs", "2", "--d-model", "16", "--n-layer", "1",
                    "--n-head", "2", "--seq-len", "16", "--lr", "0.01", "--out", path)  # fmt: skip
    assert result.exit_code == 0, result.output
    return path


def test_train_gpt_offline_lowers_the_loss(gpt_file):
    _net, info = load_model(gpt_file)
    meta = info["metadata"]
    assert info["arch"]["kind"] == "gpt" and meta["dataset"] == "markov" and meta["seq_len"] == 16
    assert meta["test_loss"] < meta["initial_test_loss"] - 0.3, meta
    assert len(meta["history"]) == 2
    assert (gpt_file.parent / "g.history.csv").is_file()


def test_analyze_gpt_file_on_its_corpus_and_on_token_files(gpt_file, tmp_path):
    out = tmp_path / "an"
    result = invoke(
        "analyze", gpt_file, "--out", out, "--repeats", "1", "--fractions", "3", "--sequences", "8"
    )
    assert result.exit_code == 0, result.output
    units = pd.read_parquet(out / "units.parquet")
    assert len(units) == 2 + 64 and (units["kind"] == "head").sum() == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "markov (test)" and summary["n_sequences"] == 8
    ids = tmp_path / "ids.npy"
    np.save(ids, np.arange(40) % 32)
    result = invoke("analyze", gpt_file, "--tokens", ids, "--seq-len", "20", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "longer than the model's context of 16" in result.output
    result = invoke("analyze", gpt_file, "--text", ids, "--out", tmp_path / "x")
    assert result.exit_code == 2 and "needs a tokenizer" in result.output
    result = invoke("layers", gpt_file)
    assert result.exit_code == 0 and "h.0.attn" in result.output and "h.0.mlp.act" in result.output


def test_train_and_analyze_vit_on_digits(tmp_path):
    path = tmp_path / "v.safetensors"
    result = invoke("train", "--arch", "vit", "--dataset", "digits", "--epochs", "1", "--d-model", "16",
                    "--n-layer", "1", "--n-head", "2", "--out", path)  # fmt: skip
    assert result.exit_code == 0, result.output
    _, info = load_model(path)
    assert info["arch"]["kind"] == "vit" and info["arch"]["input_shape"] == [1, 8, 8]
    out = tmp_path / "an"
    result = invoke(
        "analyze", path, "--out", out, "--repeats", "1", "--fractions", "3", "--noise-repeats", "1"
    )
    assert result.exit_code == 0, result.output
    units = pd.read_parquet(out / "units.parquet")
    assert set(units["layer"]) == {"h.0.attn", "h.0.mlp.act"} and "selectivity" in units
    result = invoke("analyze", path, "--tokens", path, "--out", tmp_path / "x")
    assert result.exit_code == 2 and "are for language models" in result.output


def test_train_gpt_on_a_token_file_then_analyze_it(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text(" ".join(str(i % 7) for i in range(8 * 40)))  # 0 1 2 ... 6 0 1 ...: 40 sequences of 8
    path = tmp_path / "g.safetensors"
    result = invoke("train", "--arch", "gpt", "--tokens", ids, "--seq-len", "8", "--epochs", "2", "--d-model",
                    "16", "--n-layer", "1", "--n-head", "2", "--lr", "0.01", "--out", path)  # fmt: skip
    assert result.exit_code == 0, result.output
    _, info = load_model(path)
    assert info["arch"]["vocab_size"] == 7 and info["arch"]["context"] == 8
    assert info["metadata"]["tokens"] == str(ids) and info["metadata"]["dataset"] is None
    out = tmp_path / "an"
    result = invoke("analyze", path, "--out", out, "--repeats", "1", "--fractions", "2")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["dataset"] == "ids.txt"
    result = invoke("train", "--arch", "gpt", "--dataset", "digits", "--out", tmp_path / "no.safetensors")
    assert result.exit_code == 2 and "token corpus" in result.output
