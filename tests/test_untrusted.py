"""A model directory or model file is untrusted input (issue 30): no code of it runs, no size it claims
is allocated before it is checked against this machine's memory, no open blocks, and every refusal is a
short LesionError. The bombs run in one child process each group, measured: exit code, seconds after
the imports, peak RSS (the child's own VmHWM: see ``tests.hostile_support.PEAK``)."""

from __future__ import annotations

import json
import os
import struct
import time
import warnings

import pytest
import torch

from lesion.errors import LesionNote, ModelFileError
from lesion.models import load_model
from lesion.models.hf import load_hf_dir
from lesion.pipeline.open import open_any
from tests.hostile_support import (
    edit_config,
    finishes,
    gpt2_dir,
    lesion_cases,
    lesion_cli,
    lesion_file,
    raw_safetensors,
    remote_code_dir,
    resnet_dir,
)

transformers = pytest.importorskip("transformers")
MAX_RSS_MB, MAX_SECONDS = 1024, 5.0


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return gpt2_dir(tmp_path_factory.mktemp("ok") / "gpt2")


@pytest.mark.parametrize("command", ["layers", "analyze"])
def test_a_directory_naming_its_own_code_never_runs_it(tmp_path, command):
    marker = tmp_path / "MARKER"
    model = remote_code_dir(tmp_path / "evil", marker)
    args = ["--out", tmp_path / "out", "--tokens", tmp_path / "ids.txt"] if command == "analyze" else []
    (tmp_path / "ids.txt").write_text("1 2 3 4 5 6 7 8")
    ran = lesion_cli(command, model, *args, stdin="y\n" * 20, timeout=60)  # stdin open and answering "y"
    assert not marker.exists(), ran.out
    assert ran.rc == 2 and not ran.traceback and not ran.timed_out, ran.out
    assert "auto_map" in ran.out and "--trust-remote-code" in ran.out and ran.seconds < 30
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_unknown_model_type_is_refused_before_transformers_reads_it(tmp_path):
    model = edit_config(gpt2_dir(tmp_path / "m"), model_type="nosuchmodel")
    with pytest.raises(ModelFileError, match=r"model_type 'nosuchmodel'.*trust_remote_code=True"):
        load_hf_dir(model)
    (tmp_path / "m" / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": ["t.T", None]}})
    )
    edit_config(model, model_type="gpt2")
    with pytest.raises(ModelFileError, match=r"tokenizer_config\.json names code in auto_map"):
        load_hf_dir(model)


def test_every_transformers_call_passes_trust_remote_code_false():
    from pathlib import Path

    source = (Path(__file__).parents[1] / "src/lesion/models/hf.py").read_text()
    calls = source.count(".from_pretrained(") + source.count(".from_config(")
    assert calls >= 4 and source.count("trust_remote_code=trust_remote_code") >= calls


def bomb_cases(tmp_path) -> list[tuple[str, list]]:
    """(name, lesion arguments) of every size bomb of issue 30, item 2."""
    d = tmp_path
    hf = {
        "hf_missing_weights": gpt2_dir(d / "a", n_layer=1) and edit_config(d / "a", n_embd=2048, n_layer=20),
        "hf_n_layer_100000": gpt2_dir(d / "b") and edit_config(d / "b", n_layer=100000),
        "hf_huge_n_embd": gpt2_dir(d / "c") and edit_config(d / "c", n_embd=4_000_000, n_head=4),
        "hf_resnet_image_size": resnet_dir(d / "e", image_size=100000),
        "hf_huge_vocab": gpt2_dir(d / "f") and edit_config(d / "f", vocab_size=10**10),
    }
    own = {
        "own_n_layer_200000": {"kind": "gpt", "vocab_size": 10, "context": 8, "n_layer": 200000},
        "own_widths_300000": {"kind": "mlp", "input_shape": [4], "widths": [1] * 300000, "n_classes": 2},
        "own_huge_n_embd": {"kind": "gpt", "vocab_size": 10, "context": 8, "d_model": 10**6, "n_head": 1},
        "own_conv_4096": {"kind": "convnet", "input_shape": [1, 4096, 4096], "n_classes": 2},
    }
    cases = [(name, ["layers", path]) for name, path in hf.items()]
    return cases + [
        (name, ["layers", lesion_file(d / f"{name}.safetensors", arch)]) for name, arch in own.items()
    ]


def test_size_bombs_are_refused_before_allocation(tmp_path):
    cases = bomb_cases(tmp_path)
    found, ran = lesion_cases(cases, timeout=120)
    assert set(found) == {name for name, _ in cases}, ran.out[-3000:]
    expected = {
        "hf_missing_weights": "lack", "hf_n_layer_100000": "100,000 layers", "hf_huge_n_embd": "parameters",
        "hf_resnet_image_size": "image_size 100000", "hf_huge_vocab": "parameters",
        "own_n_layer_200000": "200,000 layers", "own_widths_300000": "300,000 layers",
        "own_huge_n_embd": "parameters", "own_conv_4096": "activation of",
    }  # fmt: skip
    for name, case in found.items():
        assert case.rc == 2 and not case.traceback, (name, case.out[-2000:])
        assert expected[name] in case.out, (name, case.out[-2000:])
        assert len(case.out) < 2000, (name, len(case.out))  # never megabytes of message
        assert case.seconds < MAX_SECONDS, (name, case.seconds)
    assert ran.rss_mb < MAX_RSS_MB, ran.rss_mb  # the child's peak over all bombs, imports included


def test_weights_are_checked_against_the_header_before_loading(gpt2, tmp_path):
    """The missing-weights bomb no longer materialises 4 GB: the meta model and the header disagree."""
    model = edit_config(gpt2_dir(tmp_path / "m"), n_embd=2048, n_layer=20)
    with pytest.raises(ModelFileError, match=r"lack \d+ tensor") as e:
        load_hf_dir(model)
    assert len(str(e.value)) < 400


def test_a_fifo_weights_file_is_refused_without_blocking(gpt2, tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text((gpt2 / "config.json").read_text())
    fifos = [model / "model.safetensors", tmp_path / "own.safetensors", tmp_path / "config-fifo"]
    for f in fifos:
        os.mkfifo(f)
    start = time.perf_counter()
    for fn in (lambda: load_hf_dir(model), lambda: open_any(tmp_path / "own.safetensors")):
        error = finishes(fn, fifos)
        assert isinstance(error, ModelFileError) and "FIFO" in str(error), error
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").write_bytes((gpt2 / "model.safetensors").read_bytes())
    (model / "config.json").unlink()
    (model / "config.json").symlink_to(tmp_path / "config-fifo")
    error = finishes(lambda: load_hf_dir(model), fifos)
    assert isinstance(error, ModelFileError) and "FIFO" in str(error), error
    assert time.perf_counter() - start < MAX_SECONDS


def test_weights_outside_the_directory_are_refused(gpt2, tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text((gpt2 / "config.json").read_text())
    (model / "model.safetensors").symlink_to(gpt2 / "model.safetensors")  # a file, but elsewhere
    with pytest.raises(ModelFileError, match="leads outside"):
        load_hf_dir(model)
    (model / "model.safetensors").unlink()
    torch.save({}, tmp_path / "outside.bin")
    (model / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"w": "../outside.bin"}}))
    with pytest.raises(ModelFileError, match=r"'\.\./outside\.bin', which leads outside"):
        load_hf_dir(model, allow_pickle=True)


def test_a_genuine_resnet_config_without_image_size_opens_at_224(tmp_path):
    model = resnet_dir(tmp_path / "r")
    assert "image_size" not in json.loads((model / "config.json").read_text())
    with pytest.warns(LesionNote, match="no image_size; lesion assumes 224 x 224"):
        net, info = open_any(model)
    assert info["arch"]["input_shape"] == [1, 224, 224]
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 224, 224)).logits.shape == (1, 3)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_layer": "2"}, "n_layer is '2'; expected a positive int"),
        ({"n_embd": 16.5}, "n_embd is 16.5; expected a positive int"),
        ({"architectures": "GPT2LMHeadModel"}, "architectures is 'GPT2LMHeadModel'; expected a list"),
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, "quantised weights"),
        ({"num_labels": 10**9}, "num_labels 1,000,000,000"),
        ({"n_head": 5}, "does not build a AutoModelForCausalLM"),  # 16 / 5: transformers' own refusal
    ],
    ids=["str", "float", "archs", "quantised", "labels", "heads"],
)
def test_wrong_configs_are_model_file_errors(gpt2, tmp_path, changes, message):
    import shutil

    model = shutil.copytree(gpt2, tmp_path / "m")
    with pytest.raises(ModelFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_hf_dir(edit_config(model, **changes))


def test_flash_attention_configs_open_on_the_cpu(gpt2, tmp_path):
    import shutil

    for key in ("_attn_implementation", "attn_implementation"):
        model = shutil.copytree(gpt2, tmp_path / key)
        hf = load_hf_dir(edit_config(model, **{key: "flash_attention_2"}))
        with torch.no_grad():
            assert hf.model(torch.arange(4)[None]).logits.shape == (1, 4, 50)


def test_tokenizer_files_that_transformers_cannot_read(gpt2, tmp_path):
    import shutil

    model = shutil.copytree(gpt2, tmp_path / "m")
    (model / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "NoSuchTokenizer"}))
    with pytest.raises(ModelFileError, match="tokenizer files present but unreadable"):
        load_hf_dir(model)
    (model / "tokenizer_config.json").unlink()
    (model / "tokenizer.json").write_text('{"a":' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ModelFileError, match="nested too deeply"):
        load_hf_dir(model)


def test_non_contiguous_safetensors_offsets(gpt2, tmp_path):
    gap = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
           "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}  # fmt: skip
    path = raw_safetensors(tmp_path / "gap.safetensors", gap, bytes(12))
    with pytest.raises(
        ModelFileError, match="starts at byte 8 of the data, where the previous tensor ends at 4"
    ):
        load_model(path)
    overlap = {**gap, "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    with pytest.raises(ModelFileError, match="expected contiguous tensors"):
        load_model(raw_safetensors(tmp_path / "overlap.safetensors", overlap, bytes(4)))
    tail = {"a": gap["a"]}
    with pytest.raises(ModelFileError, match="expected them to fill it"):
        load_model(raw_safetensors(tmp_path / "tail.safetensors", tail, bytes(8)))
    import shutil

    model = shutil.copytree(gpt2, tmp_path / "m")
    raw = (model / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    start, stop = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start + 4, stop + 4]  # shifted: a gap before it, an overlap after
    raw_safetensors(model / "model.safetensors", header, raw[8 + n :])
    with pytest.raises(ModelFileError, match="contiguous"):
        load_hf_dir(model)


def test_ordinary_directories_still_open_without_notes(gpt2):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hf = load_hf_dir(gpt2)
    assert hf.notes == [] and hf.task == "causal-lm"


def test_a_dangling_weights_link_or_missing_shard_is_a_model_file_error(gpt2, tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text((gpt2 / "config.json").read_text())
    (model / "model.safetensors").symlink_to(model / "gone.safetensors")  # inside, but dangling
    with pytest.raises(ModelFileError, match="not a readable file"):
        load_hf_dir(model)
    (model / "model.safetensors").unlink()
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "part-1.safetensors"}})
    )
    with pytest.raises(ModelFileError, match=r"names 'part-1\.safetensors', which is not a readable file"):
        load_hf_dir(model)
