"""Measures of units, exactly as the paper defines them: pure functions on statistics."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats as sps


def selectivity_index(class_means: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class selectivity index and preferred class of each unit, from class means (classes, units).

    SI = (mu_max - mu_-max) / (mu_max + mu_-max), mu_max the largest class mean, mu_-max the mean of
    the other classes' means. In [0, 1] for non-negative activity. Dead units (every class mean 0) get
    NaN and preferred class -1; report them as dead rather than as unselective.

    >>> si, pref = selectivity_index(np.array([[1.0, 0.5], [0.0, 0.5]]))
    >>> si.tolist(), pref.tolist()
    ([1.0, 0.0], [0, 0])
    """
    m = np.asarray(class_means, dtype=np.float64)  # (classes, units)
    m = m[~np.isnan(m).any(axis=1)]  # classes absent from the data carry no information
    c = m.shape[0]
    if c < 2:
        raise ValueError(f"selectivity needs at least 2 classes with examples, got {c}")
    pref = m.argmax(axis=0)
    mu_max = m.max(axis=0)
    mu_rest = (m.sum(axis=0) - mu_max) / (c - 1)
    denom = mu_max + mu_rest
    dead = np.all(m == 0, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        si = np.where(dead, np.nan, (mu_max - mu_rest) / np.where(denom == 0, np.nan, denom))
    return si, np.where(dead, -1, pref)


def mutual_information(joint: torch.Tensor | np.ndarray) -> np.ndarray:
    """Mutual information in bits between binned activity and label, from counts (units, bins, classes).

    >>> mutual_information(np.array([[[5, 0], [0, 5]]])).tolist()
    [1.0]
    """
    j = np.asarray(joint, dtype=np.float64)
    total = j.sum(axis=(1, 2), keepdims=True)
    p = j / np.where(total == 0, 1, total)
    px = p.sum(axis=2, keepdims=True)
    py = p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p / (px * py)), 0.0)
    return np.maximum(terms.sum(axis=(1, 2)), 0.0)


def correlate(x, y) -> dict[str, float]:
    """Pearson r with its p-value and Spearman rho with its p-value, over the pairs where both are finite."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = {"n": int(ok.sum()), "pearson_r": math.nan, "pearson_p": math.nan}
    out |= {"spearman_rho": math.nan, "spearman_p": math.nan}
    if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        r = sps.pearsonr(x, y)
        rho = sps.spearmanr(x, y)
        out |= {"pearson_r": float(r.statistic), "pearson_p": float(r.pvalue)}
        out |= {"spearman_rho": float(rho.statistic), "spearman_p": float(rho.pvalue)}
    return out


def auc(fraction, accuracy) -> float:
    """Area under accuracy vs fraction of units ablated (trapezoid rule); in [0, 1] over 0..1.

    >>> auc([0.0, 0.5, 1.0], [1.0, 1.0, 0.0])
    0.75
    """
    f, a = np.asarray(fraction, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    order = np.argsort(f, kind="stable")
    return float(np.trapezoid(a[order], f[order]))
