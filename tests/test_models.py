"""Architectures and the model file: names, seeding, safetensors round trip, refusing pickles."""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import lesion
from lesion.errors import LesionError, ModelFileError
from lesion.models import ARCHITECTURES, build_model, convnet, load_model, mlp, resnet, save_model

ARCH = {"kind": "mlp", "input_shape": [1, 8, 8], "widths": [16, 12], "n_classes": 10, "batchnorm": True}


def children(model: torch.nn.Module) -> list[str]:
    return [name for name, _ in model.named_children()]


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa
    )


@pytest.fixture
def trained():
    """A batch-normed MLP whose running statistics and weights differ from a fresh one."""
    model = build_model(ARCH, seed=1)
    model.train()
    model(torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    return model.eval()


def test_mlp_module_names():
    assert children(mlp(64, [8, 4], 3)) == ["flatten", "fc1", "relu1", "fc2", "relu2", "out"]
    model = mlp((1, 8, 8), [8, 4], 3, dropout=0.5, batchnorm=True)
    assert children(model) == [
        "flatten", "fc1", "bn1", "relu1", "drop1", "fc2", "bn2", "relu2", "drop2", "out"
    ]  # fmt: skip
    assert isinstance(model.relu1, torch.nn.ReLU) and isinstance(model.bn2, torch.nn.BatchNorm1d)
    assert model.fc1.in_features == 64 and model.out.out_features == 3 and model.drop1.p == 0.5
    assert children(mlp(5, [], 2)) == ["flatten", "out"]


def test_mlp_forward_shape():
    assert mlp((1, 28, 28), [32], 10)(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"widths": [0]},
        {"widths": [8, -1]},
        {"widths": [1.5]},
        {"widths": [True]},
        {"widths": "12"},
        {"widths": 12},
        {"n_classes": 0},
        {"input_shape": (1, 0)},
        {"dropout": 1.0},
        {"batchnorm": 1},
        {"seed": -1},
    ],
)
def test_mlp_rejects_bad_arguments(kwargs):
    args = {"input_shape": (1, 8, 8), "widths": [4], "n_classes": 3} | kwargs
    with pytest.raises(LesionError):
        mlp(**args)


def test_seed_gives_bit_identical_weights_and_keeps_global_rng():
    state = torch.get_rng_state()
    a, b = mlp(64, [32], 10, seed=7), mlp(64, [32], 10, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert same_state(a, b)
    assert not torch.equal(a.fc1.weight, mlp(64, [32], 10, seed=8).fc1.weight)


def test_build_model_matches_mlp():
    arch = {"kind": "mlp", "input_shape": [1, 8, 8], "widths": [16], "n_classes": 10, "dropout": 0.1}
    assert same_state(build_model(arch, seed=3), mlp((1, 8, 8), [16], 10, dropout=0.1, seed=3))
    assert "mlp" in ARCHITECTURES


@pytest.mark.parametrize(
    ("arch", "match"),
    [
        (
            {"kind": "transformer"},
            "unknown architecture kind 'transformer'; known kinds: convnet, gpt, mlp, resnet, vit",
        ),
        ({"widths": [3]}, "unknown architecture kind None"),
        ([1, 2], "expected a dict"),
        ({"kind": "mlp", "widths": [3], "n_classes": 2}, "lacks input_shape"),
        ({**ARCH, "depth": 3}, r"unexpected keys \['depth'\]"),
        ({**ARCH, "seed": 3}, r"unexpected keys \['seed'\]"),
    ],
)
def test_build_model_rejects_bad_arch(arch, match):
    with pytest.raises(ModelFileError, match=match):
        build_model(arch)


def test_round_trip_is_bit_identical(tmp_path, trained):
    path = tmp_path / "model.safetensors"
    save_model(trained, path, arch=ARCH, metadata={"epochs": 3, "note": "digits"})
    assert os.listdir(tmp_path) == ["model.safetensors"]  # one file, no temporary left behind
    state = torch.get_rng_state()
    loaded, info = load_model(path)
    assert torch.equal(torch.get_rng_state(), state)
    assert info == {"arch": ARCH, "metadata": {"epochs": 3, "note": "digits"}}
    assert not loaded.training and same_state(loaded, trained)
    x = torch.randn(20, 1, 8, 8)
    assert torch.equal(loaded(x), trained(x))
    assert children(loaded) == children(trained)


def test_file_metadata(tmp_path, trained):
    save_model(trained, tmp_path / "m.safetensors", arch=ARCH)
    with safe_open(tmp_path / "m.safetensors", framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "lesion-model" and meta["version"] == "1"
    assert json.loads(meta["arch"]) == ARCH and json.loads(meta["metadata"]) == {}


def test_save_overwrites_atomically(tmp_path, trained):
    path = tmp_path / "m.safetensors"
    save_model(mlp((1, 8, 8), [16, 12], 10, batchnorm=True), path, arch=ARCH)
    save_model(trained, path, arch=ARCH)
    assert same_state(load_model(path)[0], trained) and os.listdir(tmp_path) == ["m.safetensors"]


def test_save_refuses_weights_that_do_not_fit(tmp_path, trained):
    with pytest.raises(
        ModelFileError, match=r"wrong shapes: .*fc2.weight \(12, 16\) \(expected \(13, 16\)\)"
    ):
        save_model(trained, tmp_path / "m.safetensors", arch={**ARCH, "widths": [16, 13]})
    with pytest.raises(ModelFileError, match=r"missing \['bn1.bias"):
        save_model(mlp(64, [16, 12], 10), tmp_path / "m.safetensors", arch=ARCH)
    with pytest.raises(LesionError, match="JSON"):
        save_model(trained, tmp_path / "m.safetensors", arch=ARCH, metadata={"x": object()})
    assert os.listdir(tmp_path) == []


def test_header_length_starting_with_pickle_byte_still_loads(tmp_path, trained):
    """About 1 in 32 safetensors headers has a length whose first byte is 0x80, the pickle opcode."""
    path = tmp_path / "m.safetensors"
    for pad in range(300):
        save_model(trained, path, arch=ARCH, metadata={"pad": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no padding gave a header length starting with 0x80")
    assert same_state(load_model(path)[0], trained)


class Booby:
    """Unpickling this creates the marker file: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_the_booby_trap_works(tmp_path):
    marker = tmp_path / "unpickled"
    pickle.loads(pickle.dumps(Booby(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("how", ["zip", "legacy", "pickle"])
def test_pickles_are_refused_unopened(tmp_path, how):
    marker, path = tmp_path / "unpickled", tmp_path / "model.pt"
    payload = {"fc1.weight": Booby(marker)}
    if how == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=how == "zip")
    with pytest.raises(ModelFileError, match=r"pickled torch.save file.*weights_only=True.*save_model"):
        load_model(path)
    assert not marker.exists()


def test_real_torch_save_state_dict_is_refused(tmp_path, trained):
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    with pytest.raises(ModelFileError, match="refuses to load pickles because unpickling runs code"):
        load_model(tmp_path / "model.pt")


def test_truncated_file(tmp_path, trained):
    path = tmp_path / "m.safetensors"
    save_model(trained, path, arch=ARCH)
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 100, 9, 3, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match=str(path)):
            load_model(path)


def test_garbage_files(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ModelFileError, match="not a safetensors model file"):
        load_model(path)
    # random bytes whose 9th is "{" (1 file in 256): a header length no safetensors file can have
    path.write_bytes(struct.pack("<Q", 13840233520219201196) + b"{" + os.urandom(4087))
    with pytest.raises(ModelFileError, match="not a safetensors model file"):
        load_model(path)
    body = b"{not json at all}"
    path.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(ModelFileError, match="corrupt safetensors header"):
        load_model(path)
    body = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}}'
    path.write_bytes(struct.pack("<Q", len(body)) + body + bytes(8))
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        load_model(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelFileError, match="no model file at"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(ModelFileError, match="is a directory"):
        load_model(tmp_path)


def test_safetensors_without_lesion_metadata(tmp_path, trained):
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, path)
    with pytest.raises(ModelFileError, match="without lesion metadata"):
        load_model(path)


def test_weights_that_do_not_fit_the_saved_arch(tmp_path, trained):
    path = tmp_path / "m.safetensors"
    meta = {"format": "lesion-model", "version": "1", "arch": json.dumps({**ARCH, "widths": [16, 13]})}
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, path, metadata=meta)
    with pytest.raises(ModelFileError, match=f"{path}: weights do not fit arch 'mlp': wrong shapes"):
        load_model(path)
    meta["arch"] = json.dumps({"kind": "transformer"})
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, path, metadata=meta)
    with pytest.raises(ModelFileError, match="known kinds: convnet, gpt, mlp, resnet, vit"):
        load_model(path)
    meta["arch"] = "{oops"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, path, metadata=meta)
    with pytest.raises(ModelFileError, match="unreadable arch"):
        load_model(path)


# ------------------------------------------------------------------------------- convnet and resnet

CONV_ARCH = {"kind": "convnet", "input_shape": [1, 12, 12], "n_classes": 10, "width_mult": 0.0625}
RES_ARCH = {"kind": "resnet", "input_shape": [3, 8, 8], "n_classes": 5, "width": 4, "blocks": [1, 2]}


def relu_names(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.ReLU)]


def test_convnet_module_names_and_shapes():
    net = convnet((3, 32, 32), 10, width_mult=0.25, dropout=0.5)
    names = [f"{kind}{i}" for i in range(1, 12) for kind in ("conv", "bn", "relu")]
    assert children(net) == [*names, "pool", "flatten", "fc", "relu_fc", "drop_fc", "out"]
    convs = [getattr(net, f"conv{i}") for i in range(1, 12)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 32, 64, 64, 64, 128, 128, 128]
    assert [c.stride[0] for c in convs] == [1, 1, 2, 1, 1, 2, 1, 1, 2, 1, 1]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in convs)
    assert net.fc.in_features == 128 and net.fc.out_features == 256 and net.out.in_features == 256
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    full = convnet((3, 32, 32), 10)
    assert [getattr(full, f"conv{i}").out_channels for i in range(1, 12)] == [
        64, 64, 128, 128, 128, 256, 256, 256, 512, 512, 512
    ]  # fmt: skip


def test_convnet_without_batchnorm_and_tiny_width():
    net = convnet((1, 8, 8), 3, width_mult=0.001, batchnorm=False)
    assert not any(n.startswith("bn") for n in children(net)) and "drop_fc" not in children(net)
    assert all(getattr(net, f"conv{i}").out_channels == 1 for i in range(1, 12))  # at least 1
    assert net.conv1.bias is not None
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


def test_convnet_sites():
    net = convnet((1, 12, 12), 10, width_mult=0.0625, seed=0)
    x = torch.randn(4, 1, 12, 12)
    sites = lesion.find_sites(net, x[:2])
    assert [s.name for s in sites] == [f"relu{i}" for i in range(1, 12)] + ["relu_fc"]
    assert [s.width for s in sites][-4:] == [32, 32, 32, 256]
    assert all(s.unit_dim == 1 for s in sites) and sites[-1].shape == (256,)


def test_resnet_module_names_and_sites():
    net = resnet((3, 16, 16), 10, width=4, seed=0)  # 3 stages x 2 blocks
    blocks = [f"layer{s}.{b}" for s in (1, 2, 3) for b in (0, 1)]
    assert relu_names(net) == ["stem.relu", *[f"{b}.relu{i}" for b in blocks for i in (1, 2)]]
    assert children(net) == ["stem", "layer1", "layer2", "layer3", "pool", "flatten", "fc"]
    assert [getattr(net, f"layer{s}")[0].conv2.out_channels for s in (1, 2, 3)] == [4, 8, 16]
    assert [getattr(net, f"layer{s}")[0].conv1.stride[0] for s in (1, 2, 3)] == [1, 2, 2]
    assert isinstance(net.layer1[0].shortcut, torch.nn.Identity)
    assert [n for n, _ in net.layer2[0].shortcut.named_children()] == ["conv", "bn"]
    sites = lesion.find_sites(net, torch.randn(2, 3, 16, 16))  # refuses modules used twice
    assert [s.name for s in sites] == relu_names(net)
    assert sites[-1].width == 16 and sites[-1].shape == (16, 4, 4)
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 10)


def test_resnet_options():
    net = resnet((1, 8, 8), 3, width=2, blocks=(1,), batchnorm=False, dropout=0.2)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert children(net) == ["stem", "layer1", "pool", "flatten", "drop", "fc"]
    assert net(torch.zeros(3, 1, 8, 8)).shape == (3, 3)
    assert relu_names(net) == ["stem.relu", "layer1.0.relu1", "layer1.0.relu2"]


@pytest.mark.parametrize(
    ("builder", "kwargs"),
    [
        (convnet, {"input_shape": (8, 8)}),
        (convnet, {"input_shape": (1, 0, 8)}),
        (convnet, {"width_mult": 0}),
        (convnet, {"width_mult": True}),
        (convnet, {"dropout": 1.0}),
        (convnet, {"batchnorm": "yes"}),
        (convnet, {"n_classes": 0}),
        (convnet, {"seed": -1}),
        (resnet, {"width": 0}),
        (resnet, {"blocks": []}),
        (resnet, {"blocks": [2, 0]}),
        (resnet, {"blocks": 2}),
        (resnet, {"dropout": -0.1}),
    ],
)
def test_conv_builders_reject_bad_arguments(builder, kwargs):
    with pytest.raises(LesionError):
        builder(**({"input_shape": (1, 8, 8), "n_classes": 3} | kwargs))


@pytest.mark.parametrize("arch", [CONV_ARCH, RES_ARCH])
def test_conv_archs_are_seeded_and_built_from_dicts(arch):
    state = torch.get_rng_state()
    a, b = build_model(arch, seed=4), build_model(arch, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert same_state(a, b) and not same_state(a, build_model(arch, seed=5))
    builder = ARCHITECTURES[arch["kind"]]
    kwargs = {k: v for k, v in arch.items() if k != "kind"}
    assert same_state(a, builder(**kwargs, seed=4))
    assert {"mlp", "convnet", "resnet"} <= set(ARCHITECTURES)


def _trained(arch: dict) -> torch.nn.Module:
    """The model with batch-norm running statistics moved off their initial values."""
    model = build_model(arch, seed=1).train()
    shape = [8, *arch["input_shape"]]
    model(torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    return model.eval()


@pytest.mark.parametrize(
    "arch", [ARCH, CONV_ARCH, RES_ARCH, {**RES_ARCH, "batchnorm": False, "dropout": 0.1}]
)
def test_every_arch_round_trips(tmp_path, arch):
    model = _trained(arch)
    path = tmp_path / "m.safetensors"
    save_model(model, path, arch=arch, metadata={"k": 1})
    loaded, info = load_model(path)
    assert info == {"arch": arch, "metadata": {"k": 1}}  # no "extra" key when none were saved
    assert same_state(loaded, model) and not loaded.training
    x = torch.randn([5, *arch["input_shape"]])
    assert torch.equal(loaded(x), model(x))
    assert [n for n, _ in loaded.named_modules()] == [n for n, _ in model.named_modules()]


def test_extra_tensors_round_trip(tmp_path, trained):
    path = tmp_path / "m.safetensors"
    y = torch.randint(10, (50,))
    view = torch.arange(20.0)[::2]  # not contiguous
    save_model(trained, path, arch=ARCH, extra={"train_labels": y, "odd": view, "w": trained.fc1.weight})
    with safe_open(path, framework="pt") as f:
        assert {"__extra__.train_labels", "__extra__.odd", "__extra__.w"} <= set(f.keys())
    loaded, info = load_model(path)
    assert same_state(loaded, trained)  # extras are not weights: strict loading still passes
    assert set(info["extra"]) == {"train_labels", "odd", "w"}
    assert torch.equal(info["extra"]["train_labels"], y) and info["extra"]["train_labels"].dtype == y.dtype
    assert torch.equal(info["extra"]["odd"], view) and torch.equal(info["extra"]["w"], trained.fc1.weight)


def test_extras_do_not_hide_missing_weights(tmp_path, trained):
    state = {k: v.contiguous() for k, v in trained.state_dict().items()}
    state["__extra__.fc1.bias"] = state.pop("fc1.bias")  # a weight smuggled in as an extra
    meta = {"format": "lesion-model", "version": "1", "arch": json.dumps(ARCH)}
    save_file(state, tmp_path / "m.safetensors", metadata=meta)
    with pytest.raises(ModelFileError, match=r"missing \['fc1.bias'\]"):
        load_model(tmp_path / "m.safetensors")


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ([torch.zeros(2)], "expected a dict of name -> tensor"),
        ({"": torch.zeros(2)}, "non-empty string"),
        ({3: torch.zeros(2)}, "non-empty string"),
        ({"y": [1, 2]}, r"extra\['y'\] is a list; expected a tensor"),
    ],
)
def test_bad_extras(tmp_path, trained, extra, match):
    with pytest.raises(LesionError, match=match):
        save_model(trained, tmp_path / "m.safetensors", arch=ARCH, extra=extra)
    assert os.listdir(tmp_path) == []
