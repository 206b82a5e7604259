"""The profiles' plans: the standard profile at the paper's data scale, the size study, GPU job keys."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lesion.errors import LesionError
from lesion.experiments import plan
from lesion.experiments.figures import FIGURES
from lesion.experiments.profiles import PROFILES, get_profile


def _fashion_mnist() -> bool:
    from lesion.data import load_dataset

    try:
        load_dataset("fashion-mnist")
    except LesionError:  # not installed: apt-get install dataset-fashion-mnist
        return False
    return True


def jobs_of(profile) -> list:
    return plan([j for f in FIGURES for j in f.jobs(profile).values()])


def test_profiles_are_listed():
    assert list(PROFILES) == ["quick", "standard", "paper", "tiny"]


@pytest.mark.skipif(not _fashion_mnist(), reason="needs Debian's dataset-fashion-mnist")
def test_standard_profile_plans_the_paper_scale():
    p = get_profile("standard")
    jobs = jobs_of(p)
    trains = [j for j in jobs if j.kind == "train"]
    sizes = {j.params.get("train_size") for j in trains if j.params["dataset"] == "fashion-mnist"}
    assert {4000, 15000, None} <= sizes  # 60,000 is the whole training set, shared with F1
    f1 = [j for j in trains if j.params["arch"].get("widths") == [512, 512] and "train_size" not in j.params]
    assert len(f1) == len(p.corruptions) * len(p.seeds)  # Figure 1's family: all 60,000 images
    assert all(j.params["dataset"] == "fashion-mnist" for j in f1)
    others = [j for j in trains if j.params["arch"]["kind"] == "mlp" and j not in f1]
    assert sizes - {None} == {4000, 15000, 10000} and others
    convs = [j for j in trains if j.params["arch"]["kind"] == "convnet"]
    assert convs and all(j.params["train_size"] == 10_000 for j in convs)
    curves = [j for j in jobs if j.kind == "curves"]
    assert all(j.params["examples"] == 10_000 for j in curves)
    assert {j.params["train"].get("optimizer", "adam") for j in trains} == {"adam", "sgd"}


def test_quick_profile_keys_do_not_carry_the_new_options():
    """Adding the options left the quick profile's existing jobs (and their keys) as they were."""
    jobs = jobs_of(get_profile("quick"))
    assert not any("examples" in j.params or "device" in j.params.get("train", {}) for j in jobs)
    mlps = [j for j in jobs if j.kind == "train" and j.params["dataset"] == "mnist5k"]
    sizes = {j.params.get("train_size") for j in mlps}
    assert sizes == {None, 1000, 2000}  # (T1's ViTs train on 720 digits images: a new study)


def test_a_gpu_profile_is_a_different_set_of_jobs():
    tiny = get_profile("tiny")
    cpu = {j.key for j in jobs_of(tiny)}
    gpu = jobs_of(replace(tiny, device="cuda"))
    assert not cpu & {j.key for j in gpu}
    assert all(j.params["train"]["device"] == "cuda" for j in gpu if j.kind == "train")
