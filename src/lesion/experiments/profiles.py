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
    """Sizes of every experiment; see the module docstring. All fields are JSON-able."""

    name: str
    dataset: str = "mnist5k"  # MLP studies (F1-F5a, F7, follow-ups)
    conv_dataset: str = "mnist5k"  # batch-norm studies (F5b, F6, F7-conv, Zhou)
    root: str | None = None  # where dataset files live, for datasets that are not embedded
    subset: int | None = None  # training examples of the nets outside F1's family (F3-F5a, F7, regulariser)
    curve_examples: int | None = None  # ablation curves on the first n training examples (None: all)
    conv_train_size: int | None = None  # convnets on a subset of the conv training set (None: all)
    device: str = "cpu"  # where every job trains and measures ("cuda", "cuda:1"); part of the job keys
    widths: tuple[int, ...] = (512, 512)  # F1, F2, Amjad, rotation (the generalisation study)
    small_widths: tuple[int, ...] = (128, 128)  # F7, selectivity regulariser (the selectivity study)
    sweep_widths: tuple[int, ...] = (256, 256)  # F3 ensemble, F4c sweep
    long_widths: tuple[int, ...] = (256, 256)  # F4a/b over training, F5a dropout (paper: 2048)
    corruptions: tuple[float, ...] = CORRUPTIONS
    seeds: tuple[int, ...] = (0, 1)
    lr: float = 1e-3
    batch_size: int = 128
    until_train_acc: float = 0.99  # the paper trains every net, corrupted ones too, to ~100% train acc
    max_epochs: int = 100
    repeats: int = 5  # random ablation orders per network (paper: 10)
    fractions: int = 21  # points per ablation curve
    noise_repeats: int = 2
    noise_scales: int = 11  # log-spaced 10^-1.5 .. 10^1
    ensemble: int = 12  # F3: clean-label networks differing only in seed
    extremes: int = 3  # F3: best and worst k generalisers compared
    ensemble_epochs: int = 10
    checkpoints: tuple[float, ...] = (0.25, 0.5, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
    long_epochs: int = 32  # F4a/b: train on past the test-loss minimum
    sgd_lr: float = 0.01  # F4a with plain SGD (momentum 0.9), as the paper's replications trained
    sweep_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3)
    sweep_batch_sizes: tuple[int, ...] = (32, 512)
    sweep_seeds: tuple[int, ...] = (0, 1)
    sweep_epochs: int = 8
    dropouts: tuple[float, ...] = (0.1, 0.2, 0.3)
    dropout_until: float = 0.95  # dropout slows memorisation; train acc target for random-label nets
    dropout_max_epochs: int = 150
    conv: dict[str, Any] = field(default_factory=lambda: {"channels": [16, 16, 32, 32, 32, 64],
                                                         "strides": [1, 2, 1, 2, 1, 1]})  # fmt: skip
    conv_seeds: tuple[int, ...] = (0,)
    conv_epochs: int = 6
    conv_fractions: int = 11
    conv_repeats: int = 3
    alphas: tuple[float, ...] = (-10.0, -1.0, 0.0, 1.0, 10.0)  # Leavitt & Morcos regulariser strengths
    alpha_epochs: int = 10
    rotation_repeats: int = 3
    recovery_fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)  # Meyes et al.: groups deleted
    recovery_repeats: int = 3  # random groups per fraction
    recovery_epochs: int = 2  # retraining epochs with the group held at 0
    class_ks: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200)  # Bau et al. 2020: units per class
    class_repeats: int = 2  # random k-unit controls
    size_study: tuple[int, ...] = (1000, 2000, 4000)  # training-set sizes of the size study
    # parallel work (lesion.experiments.shards): a single-unit sweep is split into unit_shards jobs, a
    # set of ablation curves into jobs of at most curves_per_shard curves; results do not depend on these
    unit_shards: int = 2
    curves_per_shard: int = 3
    # beyond the paper, T1 (a ViT's MLP neurons and heads vs label corruption) and T2 (single directions
    # through grokking, a+b mod p): lesion.experiments.figures.vit_grokking
    t1_dataset: str = "digits"
    t1_vit: dict[str, Any] = field(
        default_factory=lambda: {"patch": 2, "d_model": 32, "n_layer": 2, "n_head": 4}
    )
    t1_corruptions: tuple[float, ...] = (0.0, 0.5, 1.0)
    t1_seeds: tuple[int, ...] = (0, 1)
    t1_train_size: int | None = 720  # training images (None: all); memorising shuffled labels is the cost
    t1_lr: float = 3e-3
    t1_until: float = 0.95  # train accuracy target, corrupted labels too (at most t1_max_epochs)
    t1_max_epochs: int = 80
    t1_repeats: int = 4  # random deletion orders per network and unit kind
    t1_fractions: int = 11  # points per neuron curve (head curves: every head count)
    t2_grok: dict[str, Any] = field(default_factory=lambda: {"p": 59, "frac": 0.5, "d_model": 64, "n_head": 4,
                                    "lr": 3e-3, "weight_decay": 1.0, "steps": 1000, "every": 50})  # fmt: skip
    t2_seeds: tuple[int, ...] = (0, 1)
    t2_repeats: int = 3
    t2_fractions: int = 11
    # beyond the paper, T3 (replacement methods) and T4 (attribution vs exact): the small GPT-style decoder
    # they add to F7's MLP and convnet, trained on a built-in token corpus; resample draws per unit
    t34_corpus: str = "markov"
    t34_sequences: int = 512  # 3/4 train, 1/4 held out (where every unit is measured)
    t34_seq_len: int = 32
    t34_gpt: tuple[int, int, int] = (32, 2, 4)  # d_model, layers, heads
    t34_gpt_epochs: int = 6
    t34_resample_repeats: int = 3
    t34_examples: int | None = 500  # held-out classifier examples every unit is measured on (None: all)
    t34_lm_sequences: int | None = 32  # held-out decoder sequences every unit is measured on (None: all)
    t34_optimal_steps: int = 10  # Adam steps fitting each optimal constant (from the better of 0, mean)
    t34_conv_examples: int | None = (
        100  # ... for the convnet (its optimal constants cost most: k copies a step)
    )

    # sizes of any other study, by study id: {"my-study": {"networks": 4}}; read with ``size``
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def size(self, study: str, key: str, default: Any) -> Any:
        """A study's own size ``key`` in this profile, ``default`` where the profile sets none."""
        return self.sizes.get(study, {}).get(key, default)


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
    noise_repeats=5,
    ensemble=50,
    extremes=5,
    ensemble_epochs=30,
    checkpoints=(0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
    long_epochs=64,
    sweep_lrs=(1e-4, 3e-4, 1e-3, 3e-3),
    sweep_batch_sizes=(32, 128, 512),
    sweep_seeds=(0, 1),
    sweep_epochs=30,
    dropout_until=0.99,
    dropout_max_epochs=640,
    conv={},  # the paper's 11-layer convnet, full width
    conv_seeds=(0, 1),
    conv_epochs=40,
    conv_fractions=26,
    conv_repeats=10,
    alpha_epochs=30,
    rotation_repeats=10,
    unit_shards=8,
    curves_per_shard=2,
    # T1, T2
    t1_dataset="mnist5k",
    t1_vit={"patch": 4, "d_model": 64, "n_layer": 4, "n_head": 4},
    t1_corruptions=CORRUPTIONS,
    t1_seeds=(0, 1, 2),
    t1_train_size=None,
    t1_until=0.99,
    t1_max_epochs=300,
    t1_repeats=10,
    t1_fractions=21,
    t2_grok={
        "p": 113,
        "frac": 0.3,
        "d_model": 128,
        "n_head": 4,
        "lr": 1e-3,
        "weight_decay": 1.0,
        "steps": 20000,
        "every": 250,
    },
    t2_seeds=(0, 1, 2, 3, 4),
    t2_repeats=10,
    t2_fractions=21,
    # T3, T4
    t34_sequences=4096,
    t34_seq_len=64,
    t34_gpt=(128, 4, 8),
    t34_gpt_epochs=20,
    t34_resample_repeats=10,
    t34_examples=2000,
    t34_lm_sequences=256,
    t34_optimal_steps=60,
    t34_conv_examples=500,
)

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
    noise_repeats=1,
    noise_scales=3,
    ensemble=4,
    extremes=1,
    ensemble_epochs=2,
    checkpoints=(0.5, 1, 2),
    long_epochs=2,
    sweep_lrs=(1e-3, 3e-3),
    sweep_batch_sizes=(64,),
    sweep_seeds=(0,),
    sweep_epochs=2,
    dropouts=(0.2,),
    dropout_until=0.5,
    dropout_max_epochs=3,
    conv={"channels": [4, 8], "strides": [1, 2]},
    conv_epochs=1,
    conv_fractions=3,
    conv_repeats=1,
    alphas=(-1.0, 0.0, 1.0),
    alpha_epochs=1,
    rotation_repeats=1,
    curves_per_shard=1,
    # T1, T2
    t1_vit={"patch": 4, "d_model": 16, "n_layer": 1, "n_head": 2},
    t1_seeds=(0,),
    t1_train_size=200,
    t1_until=0.5,
    t1_max_epochs=3,
    t1_repeats=2,
    t1_fractions=3,
    t2_grok={
        "p": 11,
        "frac": 0.5,
        "d_model": 16,
        "n_head": 2,
        "lr": 1e-2,
        "weight_decay": 1.0,
        "steps": 120,
        "every": 30,
    },
    t2_seeds=(0, 1),
    t2_repeats=2,
    t2_fractions=3,
    # T3, T4
    t34_sequences=64,
    t34_seq_len=16,
    t34_gpt=(16, 1, 2),
    t34_gpt_epochs=1,
    t34_resample_repeats=1,
    t34_examples=200,
    t34_lm_sequences=None,
    t34_optimal_steps=5,
    t34_conv_examples=100,
)

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
    ensemble=24,
    extremes=6,
    dropout_until=0.9,
    dropout_max_epochs=60,
    subset=10_000,
    curve_examples=10_000,
    conv_train_size=10_000,
    size_study=(4_000, 15_000, 60_000),
    curves_per_shard=5,
    # T1, T2: mnist5k ViTs on all 4,000 training images; grokking at p = 97 over three seeds
    t1_dataset="mnist5k",
    t1_vit={"patch": 7, "d_model": 32, "n_layer": 2, "n_head": 4},
    t1_seeds=(0, 1, 2),
    t1_train_size=None,
    t1_until=0.99,
    t1_max_epochs=150,
    t1_repeats=5,
    t1_fractions=21,
    t2_grok={
        "p": 97,
        "frac": 0.4,
        "d_model": 64,
        "n_head": 4,
        "lr": 2e-3,
        "weight_decay": 1.0,
        "steps": 4000,
        "every": 100,
    },
    t2_seeds=(0, 1, 2, 3),
    t2_repeats=5,
    t2_fractions=21,
    # T3, T4
    t34_sequences=2048,
    t34_gpt=(64, 2, 4),
    t34_gpt_epochs=10,
    t34_resample_repeats=5,
    t34_examples=2000,
    t34_lm_sequences=128,
    t34_optimal_steps=60,
    t34_conv_examples=500,
)

PROFILES = {p.name: p for p in (QUICK, STANDARD, PAPER, TINY)}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise LesionError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")
    return PROFILES[name]
