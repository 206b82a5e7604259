"""A study's own sizes live with the study (``Figure.sizes``); a profile changes them in ``Profile.sizes``.

The job keys below were computed before the sizes moved out of 75 ``Profile`` fields: the move changed no
job of any study in the tiny and quick profiles (each digest covers every job name and key of a study).
"""

from __future__ import annotations

import hashlib
from dataclasses import fields

import pytest

from lesion.errors import LesionError
from lesion.experiments.figures import STUDIES, check_sizes
from lesion.experiments.figures.generalisation import F3
from lesion.experiments.profiles import PROFILES, Profile, get_profile

KEYS = {  # (profile, study, job name): job key
    ("tiny", "F1", "corrupt0/seed0"): "de6c1e8c03a8ba4fa526",
    ("tiny", "F3", "train/net0"): "66df058fefa799b101c1",
    ("tiny", "F5b", "bn/seed0"): "8d011818317dab23671b",
    ("tiny", "T2", "grok_s0"): "6f12b91b8403066570cd",
    ("tiny", "T3", "gpt"): "61a4ededc2d91b3b024a",
    ("quick", "F4a", "sgd/curves/0.5"): "64c2faeddcf87c7ffdb6",
    ("quick", "T1", "vit_c0.5_s1"): "8d87940a3499b15c01da",
    ("quick", "meyes-recovery", "recovery"): "e7f3c99b947535b8dc24",
}

DIGESTS = {  # profile -> study -> sha256 of its sorted "job name key" lines (16 hex digits)
    "tiny": {
        "F1": "5dc8c5d88782c1ca", "F2": "e83ecf9c16ae20bc", "F3": "a03467f0a008d40c",
        "F4a": "9652da031bc76aff", "F4c": "f11504d1f4d74f03", "F5a": "355aa7402dab5723",
        "F5b": "e0a51e434d01cd47", "F6": "8004cb3152c7eeba", "F7": "5ecdd11aeb95ea96",
        "T1": "abed5251c905cdbe", "T2": "daaa2d5f2acecac6", "T3": "cb9d81c51f53e0b8",
        "T4": "7c588515844f425f", "amjad-info-order": "352499aaedaeb267",
        "bau-class-units": "9928987df935bfe2", "bau-rotation": "c8107ebc8509b39d",
        "leavitt-selectivity-reg": "ff3ba425b0cf9723", "meyes-recovery": "ba49031056974daf",
        "size-study": "4a07b97919d1534a", "zhou-class-drops": "1213c1b0db7abd00",
    },
    "quick": {
        "F1": "33fc106ad693904e", "F2": "ecbe2f9c8af8809c", "F3": "d37aae9795657e03",
        "F4a": "108f2b68207a8887", "F4c": "640773eca3a0867d", "F5a": "d5ce0e9aa462101a",
        "F5b": "bee74486e9a3c45e", "F6": "1c00f947e7ac3e89", "F7": "b96eb02b13c02b72",
        "T1": "0d4d690518679ca1", "T2": "666dddad1af181b9", "T3": "698b89599865d2db",
        "T4": "d17bb2063bf2bca8", "amjad-info-order": "a6e3d03467e16a4e",
        "bau-class-units": "897b1bfc2fb4f8ac", "bau-rotation": "9e110d79635e6c1e",
        "leavitt-selectivity-reg": "e58f80a8167d5b6d", "meyes-recovery": "f5ed3677128b22d2",
        "size-study": "c5b204b8d01b3d2c", "zhou-class-drops": "6965481cd1f3344a",
    },
}  # fmt: skip


def _digest(jobs) -> str:
    text = "\n".join(f"{name} {job.key}" for name, job in sorted(jobs.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("profile", ["tiny", "quick"])
def test_every_study_plans_the_jobs_it_planned_before_its_sizes_moved(profile):
    p = get_profile(profile)
    got = {study: _digest(STUDIES[study].jobs(p)) for study in DIGESTS[profile]}
    assert got == DIGESTS[profile]
    for (name, study, job), key in KEYS.items():
        if name == profile:
            assert STUDIES[study].jobs(p)[job].key == key, (study, job)


def test_profiles_hold_shared_sizes_and_every_study_size_they_set_is_declared():
    assert len(fields(Profile)) <= 30  # was 76: one field or more per study
    for p in PROFILES.values():
        check_sizes(p)


def test_a_size_falls_back_to_the_declared_default_and_a_profile_changes_it():
    quick = get_profile("quick")
    assert F3.size(quick, "ensemble") == 12 == F3.sizes["ensemble"]
    assert F3.size(get_profile("standard"), "ensemble") == 24
    bigger = quick.resize("F3", ensemble=20)
    assert F3.size(bigger, "ensemble") == 20 and F3.size(bigger, "extremes") == 3
    assert len(F3.jobs(bigger)) == 2 * 20
    assert quick.sizes == {}  # resize leaves the profile it started from as it was


def test_an_unknown_size_is_refused_naming_the_study_and_the_key():
    typo = get_profile("tiny").resize("F3", ensembel=4)
    with pytest.raises(LesionError, match=r"'ensembel' of study 'F3'.*'ensemble'"):
        F3.jobs(typo)
    with pytest.raises(LesionError, match=r"'ensembel' of study 'F3'"):
        check_sizes(typo)
    with pytest.raises(LesionError, match=r"study 'F3' declares no size 'seeds'"):
        F3.size(get_profile("tiny"), "seeds")
    with pytest.raises(LesionError, match=r"sizes of 'f3'; expected registered studies"):
        check_sizes(get_profile("tiny").resize("f3", ensemble=4))
