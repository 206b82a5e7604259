"""``lesion atlas`` and the atlas folder: the files, their agreement, completeness, resuming, bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from lesion.cli import app
from lesion.roles.atlas import ATLAS_FILES, render, script_json
from lesion.roles.page import cards_of
from lesion.util.outputs import OutputError, read_manifest

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A 64-16-10 MLP trained one epoch on digits, saved with training labels of which 40 were changed."""
    from lesion.data import load_dataset
    from lesion.models import load_model, save_model

    folder = tmp_path_factory.mktemp("atlas")
    path = folder / "tiny.safetensors"
    result = invoke("train", "--widths", "16", "--epochs", "1", "--dataset", "digits", "--out", path)
    assert result.exit_code == 0, result.output
    net, info = load_model(path)
    y = load_dataset("digits").y_train.clone()
    y[:40] = (y[:40] + 1) % 10
    save_model(net, path, arch=info["arch"], metadata=info["metadata"], extra={"train_labels": y})
    return path


@pytest.fixture(scope="module")
def atlas_dir(model_file):
    out = model_file.parent / "out"
    result = invoke("atlas", model_file, "--out", out, "--examples", "200", "--pairs", "4")
    assert result.exit_code == 0, result.output
    return out


def test_the_atlas_folder_is_complete_and_its_files_agree(atlas_dir):
    doc = read_manifest(atlas_dir)  # every file as the manifest recorded it
    assert set(doc["files"]) == set(ATLAS_FILES)
    df = pd.read_parquet(atlas_dir / "roles.parquet")
    cards = json.loads((atlas_dir / "cards.json").read_text())
    back = cards_of(cards)
    assert len(df) == 16 == len(back)
    assert list(df.unit) == [c["unit"] for c in back] == [f"relu1:{j}" for j in range(16)]
    assert list(df.role) == [c["role"] for c in back]
    assert (df.n_examples == 200).all()
    assert df.mem_changed.notna().all()  # the model file's training labels differ from the true ones
    assert cards["meta"]["classes"] == [str(c) for c in range(10)]
    shown = {i for c in back for i in c["top_index"] + c["bottom_index"]}
    assert set(map(int, cards["images"])) == shown
    assert all(v.startswith("data:image/png;base64,") for v in cards["images"].values())


def test_the_page_is_self_contained(atlas_dir):
    page = (atlas_dir / "atlas.html").read_text()
    assert "<script src" not in page and "<link" not in page and "http://" not in page.split("<style>")[0]
    data = page.split('<script type="application/json" id="atlas-data">')[1].split("</script>")[0]
    doc = json.loads(data)
    assert [c["unit"] for c in cards_of(doc)] == [f"relu1:{j}" for j in range(16)]
    assert "window.LesionCard" in page


def test_data_cannot_close_the_script_element():
    text = script_json({"role": "</script><script>alert(1)</script>"})
    assert "</script>" not in text and json.loads(text)["role"].startswith("</script>")
    page = render({"title": "<b>t</b>", "meta": {}, "n": 0, "images": {}})
    assert "<b>t</b>" not in page  # the title is escaped


def test_a_complete_atlas_is_replaced_only_with_force(atlas_dir, model_file):
    result = invoke("atlas", model_file, "--out", atlas_dir, "--examples", "200", "--pairs", "4")
    assert result.exit_code == 2 and "already holds a complete atlas" in result.output


def test_an_interrupted_atlas_is_never_complete_and_resumes(model_file, monkeypatch):
    out = model_file.parent / "interrupted"
    import lesion.roles.atlas as atlas_module
    import lesion.roles.stages_run as assemble

    def crash(doc):
        raise KeyboardInterrupt

    monkeypatch.setattr(atlas_module, "render", crash)
    result = invoke("atlas", model_file, "--out", out, "--examples", "60", "--pairs", "2")
    assert result.exit_code != 0
    with pytest.raises(OutputError, match="incomplete"):
        read_manifest(out)
    assert not (out / "atlas.html").exists()
    kept = sorted(p.name.split("-")[0] for p in (out / ".partial").glob("*.npz"))
    assert "effects" in kept and "memorisation" in kept
    monkeypatch.undo()

    def no_rerun(*a, **k):
        raise AssertionError("a kept stage was measured again")

    monkeypatch.setattr(assemble, "single_effects", no_rerun)
    result = invoke("atlas", model_file, "--out", out, "--examples", "60", "--pairs", "2")
    assert result.exit_code == 0, result.output
    read_manifest(out)
    assert not (out / ".partial").exists()


def test_language_model_flags_on_a_classifier_are_refused_clearly(model_file, tmp_path):
    tokens = tmp_path / "t.txt"
    tokens.write_text("1 2 3")
    result = invoke("atlas", model_file, "--out", tmp_path / "o", "--tokens", tokens)
    assert result.exit_code == 2 and "are for language models" in result.output


def test_write_atlas_from_the_library(tmp_path):
    from lesion.roles import build
    from lesion.roles.atlas import example_ids, thumbnails, write_atlas
    from tests.toys import Planted, planted_data

    x, y = planted_data(4)
    atlas = build(Planted(), (x, y), pair_units=3)
    assert thumbnails((x, y), example_ids(atlas)) == {}  # vectors are not images
    names = write_atlas(tmp_path / "a", atlas, {}, title="planted")
    assert sorted(names) == sorted(ATLAS_FILES)
    df = pd.read_parquet(tmp_path / "a" / "roles.parquet")
    assert df.loc[df.unit == "act1:3", "role"].item() == "dead"
    img = torch.rand(3, 1, 8, 8)
    assert len(thumbnails((img, torch.zeros(3, dtype=torch.long)), [0, 2])) == 2


def test_a_language_model_atlas_shows_tokens_in_context(tmp_path):
    pytest.importorskip("transformers")
    from lesion.roles import build
    from lesion.roles.atlas import token_texts, write_atlas
    from tests.text_support import ToyTokenizer, pattern, tiny_gpt

    x = pattern(16, seed=5)
    atlas = build(tiny_gpt(), {"input_ids": x}, pair_units=2, batch_size=8, top=3)
    windows, names = token_texts({"input_ids": x}, atlas, decode=ToyTokenizer().convert_ids_to_tokens)
    for c in atlas.cards:
        for i in c.top_index:
            ids, at = windows[str(i)]
            assert ids[at] == int(x.reshape(-1)[i])  # the marked token is the example itself
    assert names["5"] == "t5"
    write_atlas(tmp_path / "a", atlas, title="gpt", texts=(windows, names))
    doc = json.loads((tmp_path / "a" / "cards.json").read_text())
    assert doc["meta"]["task"] == "causal-lm" and doc["texts"] and doc["meta"]["token_names"]["5"] == "t5"


@pytest.mark.slow
def test_lesion_atlas_of_a_language_model_file(tmp_path):
    model = tmp_path / "gpt.safetensors"
    result = invoke("train", "--arch", "gpt", "--epochs", "1", "--out", model)
    assert result.exit_code == 0, result.output
    result = invoke("atlas", model, "--out", tmp_path / "a", "--sequences", "16", "--pairs", "2")
    assert result.exit_code == 0, result.output
    df = pd.read_parquet(tmp_path / "a" / "roles.parquet")
    assert set(df.kind) == {"neuron (every position)", "attention head"}
    assert df.loc[df.kind == "attention head", "head_previous"].notna().all()
