"""Profiles: how big each experiment of ``lesion reproduce`` is (data, widths, seeds, repeats, epochs).

A profile changes sizes, never the science: every figure runs the same specs in every profile. ``quick``
fits in ten minutes on a 2-core CPU (the embedded mnist5k, MLPs, small convnets for the batch-norm
figures); ``standard`` runs the MLP studies on Fashion-MNIST's 60,000 training images in over 2 hours
on 2 cores (see its comment for what was shrunk); ``paper`` uses the paper's widths and repeats on
Fashion-MNIST; ``tiny`` is a smoke test.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lesion.errors import LesionError

CORRUPTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class Profile:
    """The sizes several studies share, and each study's own sizes (``sizes``, by study id) where they
    differ from the defaults the study declares. All fields are JSON-able."""

    name: str
    dataset: str = "mnist5k"  # MLP studies (F1-F5a, F7, follow-ups)
    conv_dataset: str = "mnist5k"  # batch-norm studies (F5b, F6, F7-conv, Zhou)
    root: str | None = None  # where dataset files live, for datasets that are not embedded
    subset: int | None = None  # training examples of the nets outside F1's family (F3-F5a, F7, regulariser)
    curve_examples: int | None = None  # ablation curves on the first n training examples (None: all)
    conv_train_size: int | None = None  # convnets on a subset of the conv training set (None: all)
    device: str = "cpu"  # where every job trains and measures ("cuda", "cuda:1"); part of the job keys
    widths: tuple[int, ...] = (512, 512)  # F1, F2, Amjad, rotation, Meyes, Bau, size study
    small_widths: tuple[int, ...] = (128, 128)  # F7 (and T3/T4, Zhou on its nets), selectivity regulariser
    sweep_widths: tuple[int, ...] = (256, 256)  # F3 ensemble, F4c sweep
    long_widths: tuple[int, ...] = (256, 256)  # F4a/b over training, F5a dropout (paper: 2048)
    corruptions: tuple[float, ...] = CORRUPTIONS  # F1, F2
    seeds: tuple[int, ...] = (0, 1)
    lr: float = 1e-3
    batch_size: int = 128
    until_train_acc: float = 0.99  # the paper trains every net, corrupted ones too, to ~100% train acc
    max_epochs: int = 100
    repeats: int = 5  # random ablation orders per network (paper: 10)
    fractions: int = 21  # points per ablation curve
    # the convnets of F5b, F6 and F7 (which Zhou, T3 and T4 reuse)
    conv: dict[str, Any] = field(default_factory=lambda: {"channels": [16, 16, 32, 32, 32, 64],
                                                         "strides": [1, 2, 1, 2, 1, 1]})  # fmt: skip
    conv_seeds: tuple[int, ...] = (0,)
    conv_epochs: int = 6
    # parallel work (lesion.experiments.shards): a single-unit sweep is split into unit_shards jobs, a
    # set of ablation curves into jobs of at most curves_per_shard curves; results do not depend on these
    unit_shards: int = 2
    curves_per_shard: int = 3
    # one study's own sizes, by study id, where this profile differs from the defaults the study declares
    # (``Figure.sizes``): {"F3": {"ensemble": 24}}; read with ``Figure.size(profile, key)``
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resize(self, study: str, **sizes: Any) -> Profile:
        """This profile with ``sizes`` set for ``study`` (merged over the ones it sets already)."""
        return replace(self, sizes={**self.sizes, study: {**self.sizes.get(study, {}), **sizes}})


QUICK = Profile("quick")

PAPER = Profile(
    "paper",
    dataset="fashion-mnist",
    conv_dataset="fashion-mnist",
    long_widths=(2048, 2048),
    seeds=(0, 1, 2),
    max_epochs=640,
    repeats=10,
    fractions=51,
    conv={},  # the paper's 11-layer convnet, full width
    conv_seeds=(0, 1),
    conv_epochs=40,
    unit_shards=8,
    curves_per_shard=2,
    sizes={
        "F2": {"repeats": 5},
        "F3": {"ensemble": 50, "extremes": 5, "epochs": 30},
        "F4a": {"checkpoints": (0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64), "epochs": 64},
        "F4c": {"lrs": (1e-4, 3e-4, 1e-3, 3e-3), "batch_sizes": (32, 128, 512), "seeds": (0, 1),
                "epochs": 30},
        "F5a": {"until": 0.99, "max_epochs": 640},
        "F5b": {"fractions": 26, "repeats": 10},
        "leavitt-selectivity-reg": {"epochs": 30},
        "bau-rotation": {"repeats": 10},
        "T1": {
            "dataset": "mnist5k",
            "vit": {"patch": 4, "d_model": 64, "n_layer": 4, "n_head": 4},
            "corruptions": CORRUPTIONS,
            "seeds": (0, 1, 2),
            "train_size": None,
            "until": 0.99,
            "max_epochs": 300,
            "repeats": 10,
            "fractions": 21,
        },
        "T2": {
            "grok": {"p": 113, "frac": 0.3, "d_model": 128, "n_head": 4, "lr": 1e-3, "weight_decay": 1.0,
                     "steps": 20000, "every": 250},
            "seeds": (0, 1, 2, 3, 4),
            "repeats": 10,
            "fractions": 21,
        },
        "T3": {"sequences": 4096, "seq_len": 64, "gpt": (128, 4, 8), "gpt_epochs": 20, "resample_repeats": 10,
               "examples": 2000, "lm_sequences": 256, "optimal_steps": 60, "conv_examples": 500},
        "ROLES": {"examples": 10000, "conv_examples": 2000},  # the full-width convnet's cards cost most
    },
)  # fmt: skip

TINY = replace(
    QUICK,
    name="tiny",
    dataset="digits",
    conv_dataset="digits",
    widths=(24,),
    small_widths=(16,),
    sweep_widths=(16,),
    long_widths=(24,),
    corruptions=(0.0, 0.5, 1.0),
    seeds=(0,),
    until_train_acc=0.9,
    max_epochs=20,
    repeats=2,
    fractions=5,
    conv={"channels": [4, 8], "strides": [1, 2]},
    conv_epochs=1,
    curves_per_shard=1,
    sizes={
        "F2": {"repeats": 1, "scales": 3},
        "F3": {"ensemble": 4, "extremes": 1, "epochs": 2},
        "F4a": {"checkpoints": (0.5, 1, 2), "epochs": 2},
        "F4c": {"lrs": (1e-3, 3e-3), "batch_sizes": (64,), "seeds": (0,), "epochs": 2},
        "F5a": {"dropouts": (0.2,), "until": 0.5, "max_epochs": 3},
        "F5b": {"fractions": 3, "repeats": 1},
        "leavitt-selectivity-reg": {"alphas": (-1.0, 0.0, 1.0), "epochs": 1},
        "bau-rotation": {"repeats": 1},
        "T1": {"vit": {"patch": 4, "d_model": 16, "n_layer": 1, "n_head": 2}, "seeds": (0,),
               "train_size": 200, "until": 0.5, "max_epochs": 3, "repeats": 2, "fractions": 3},
        "T2": {
            "grok": {"p": 11, "frac": 0.5, "d_model": 16, "n_head": 2, "lr": 1e-2, "weight_decay": 1.0,
                     "steps": 120, "every": 30},
            "seeds": (0, 1),
            "repeats": 2,
            "fractions": 3,
        },
        "T3": {"sequences": 64, "seq_len": 16, "gpt": (16, 1, 2), "gpt_epochs": 1, "resample_repeats": 1,
               "examples": 200, "lm_sequences": None, "optimal_steps": 5, "conv_examples": 100},
    },
)  # fmt: skip

# The paper's data scale where 2 CPU cores allow it: measured 2 h 17 min for all 261 jobs in one
# uninterrupted fresh-clone run (see the README): Figure 1's family (F1, F2, the size study at
# 4,000 / 15,000 / 60,000 images, and the follow-ups that reuse its clean net) trains 2x512 MLPs, as the
# paper did, on all 60,000 Fashion-MNIST training images. Shrunk to fit: 3 corruption levels instead
# of 6; every other network (F3's 24-net ensemble, F4 with Adam and SGD, the F4c sweep, F5a, F7, the
# regulariser) trains on 10,000 of the images, F4a/F5a at 2x1024 instead of 2x2048; ablation curves are
# read on 10,000 training images; random-label dropout nets train to 0.9 (at most 60 epochs); convnets
# (16-64 channels) on 10,000 images.
STANDARD = replace(
    QUICK,
    name="standard",
    dataset="fashion-mnist",
    conv_dataset="fashion-mnist",
    corruptions=(0.0, 0.5, 1.0),
    long_widths=(1024, 1024),
    max_epochs=300,
    subset=10_000,
    curve_examples=10_000,
    conv_train_size=10_000,
    curves_per_shard=5,
    sizes={
        "F3": {"ensemble": 24, "extremes": 6},
        "F5a": {"until": 0.9, "max_epochs": 60},
        "size-study": {"train_sizes": (4_000, 15_000, 60_000)},
        # T1, T2: mnist5k ViTs on all 4,000 training images; grokking at p = 97 over three seeds
        "T1": {"dataset": "mnist5k", "vit": {"patch": 7, "d_model": 32, "n_layer": 2, "n_head": 4},
               "seeds": (0, 1, 2), "train_size": None, "until": 0.99, "max_epochs": 150, "repeats": 5,
               "fractions": 21},
        "T2": {
            "grok": {"p": 97, "frac": 0.4, "d_model": 64, "n_head": 4, "lr": 2e-3, "weight_decay": 1.0,
                     "steps": 4000, "every": 100},
            "seeds": (0, 1, 2, 3),
            "repeats": 5,
            "fractions": 21,
        },
        "T3": {"sequences": 2048, "gpt": (64, 2, 4), "gpt_epochs": 10, "resample_repeats": 5,
               "examples": 2000, "lm_sequences": 128, "optimal_steps": 60, "conv_examples": 500},
    },
)  # fmt: skip

PROFILES = {p.name: p for p in (QUICK, STANDARD, PAPER, TINY)}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise LesionError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")
    return PROFILES[name]
