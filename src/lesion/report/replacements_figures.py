"""Figures of T3 (importance under four replacement methods) and T4 (attribution estimate vs exact)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import FuncFormatter

from lesion.report.figures import Tables, _fig, _save

NETS = {"mlp": "MLP", "convnet": "convnet (BN)", "gpt": "GPT decoder"}
METHODS = ("zero", "mean", "resample", "optimal")


def draw_t3(t: Tables, stem: Path) -> list[Path]:
    """Left: Spearman rho between each pair of methods, per network, with 95% intervals; middle: zero
    vs optimal loss change per unit; right: F7's pooled Pearson r under each method."""
    fig, (ax, ax2, ax3) = _fig(3, 5.0)
    r = t["rank_agreement"]
    pairs = list(dict.fromkeys(zip(r.a, r.b, strict=True)))
    nets = list(dict.fromkeys(r.net))
    width = 0.8 / max(1, len(nets))
    for i, n in enumerate(nets):
        g = r[r.net == n].set_index(["a", "b"]).loc[pairs]
        x = np.arange(len(pairs)) + (i - (len(nets) - 1) / 2) * width
        err = np.vstack([g.spearman - g.ci_low, g.ci_high - g.spearman]).clip(min=0)
        ax.bar(x, g.spearman, width, yerr=err, capsize=2, color=f"C{i}", label=NETS.get(n, n))
    ax.axhline(1.0, color="0.4", lw=0.8, ls=":")
    ax.set_xticks(np.arange(len(pairs)), [f"{a}\nvs {b}" for a, b in pairs], fontsize=7)
    ax.set(
        ylim=(min(0.0, float(r.ci_low.min()) - 0.05), 1.25),
        ylabel="Spearman rho of unit importance",
        title="Rank agreement between deletion methods",
    )
    ax.legend(fontsize=7, frameon=False, loc="upper left", ncols=3)
    imp = t["importance"]
    for i, n in enumerate(nets):
        w = imp[imp.net == n].pivot_table(index=["layer", "unit"], columns="method", values="delta_loss")
        ax2.scatter(w["zero"], w["optimal"], s=6, alpha=0.6, color=f"C{i}", label=NETS.get(n, n))
    lo = float(np.nanmin(imp.delta_loss))
    hi = float(np.nanmax(imp.delta_loss))
    ax2.plot([lo, hi], [lo, hi], color="0.4", lw=0.8, ls="--")
    ax2.set(
        xlabel="Loss change, zero replacement (symlog)",
        ylabel="Loss change, optimal constant (symlog)",
        title="Optimal constant vs zero, per unit",
    )
    _symlog(ax2, imp.delta_loss)
    ax2.legend(fontsize=7, frameon=False)
    s = t["selectivity"]
    cls = list(dict.fromkeys(s.net))
    for n in cls:
        g = s[s.net == n].set_index("method").loc[list(METHODS)]
        ax3.plot(np.arange(len(METHODS)), g.pearson_r, "o-", color=f"C{nets.index(n)}", label=NETS.get(n, n))
    ax3.axhspan(-0.5, 0.5, color="0.92", zorder=0, label="|r| < 0.5 (criterion)")
    ax3.axhline(0, color="0.4", lw=0.8)
    ax3.set_xticks(np.arange(len(METHODS)), list(METHODS))
    ax3.set(
        ylim=(-1, 1),
        xlabel="Deletion method",
        ylabel="Pearson r (selectivity, loss change)",
        title="F7 under each method",
    )
    ax3.legend(fontsize=7, frameon=False)
    return _save(fig, stem)


def draw_t4(t: Tables, stem: Path) -> list[Path]:
    """One panel per network: estimate (x) against exact loss change (y), false negatives circled; and
    the per-layer Spearman rho with its 95% interval."""
    a = t["attribution"]
    nets = list(dict.fromkeys(a.net))
    fig, axes = _fig(len(nets) + 1, 4.2)
    for i, (ax, n) in enumerate(zip(axes, nets, strict=False)):
        g = a[a.net == n]
        for kind, marker in (("neuron", "o"), ("head", "^")):
            k = g[g.kind == kind]
            if len(k):
                ax.scatter(
                    k.estimate, k.exact, s=8, alpha=0.6, marker=marker, color=f"C{i}", label=f"{kind}s"
                )
        fn = g[g.false_negative.fillna(False).astype(bool)]
        ax.scatter(
            fn.estimate,
            fn.exact,
            s=60,
            facecolors="none",
            edgecolors="red",
            lw=1.2,
            label="false negatives (top 10% exact,\nnot top 10% estimate)",
        )
        lo = float(min(g.estimate.min(), g.exact.min()))
        hi = float(max(g.estimate.max(), g.exact.max()))
        ax.plot([lo, hi], [lo, hi], color="0.4", lw=0.8, ls="--")
        ax.set(
            xlabel="Attribution estimate of loss change (symlog)",
            ylabel="Exact loss change (symlog)",
            title=NETS.get(n, n),
        )
        _symlog(ax, np.r_[g.estimate, g.exact])
        ax.legend(fontsize=6, frameon=False, loc="upper left")
    ax = axes[-1]
    s = t["spearman"]
    s = s[s.layer != "all"].reset_index(drop=True)
    colors = [f"C{nets.index(n)}" for n in s.net]
    err = np.vstack([s.spearman - s.ci_low, s.ci_high - s.spearman]).clip(min=0)
    ax.barh(np.arange(len(s)), s.spearman, xerr=err, color=colors, capsize=2)
    ax.set_yticks(
        np.arange(len(s)),
        [f"{NETS.get(n, n)}: {layer}" for n, layer in zip(s.net, s.layer, strict=True)],
        fontsize=6,
    )
    ax.invert_yaxis()
    ax.axvline(1.0, color="0.4", lw=0.8, ls=":")
    ax.set(
        xlim=(min(0.0, float(s.ci_low.min()) - 0.05), 1.05),
        xlabel="Spearman rho (estimate, exact)",
        title="Agreement per layer (95% CI)",
    )
    return _save(fig, stem)


def _symlog(ax, values) -> None:
    """Both axes symlog, linear within the smallest quarter of the nonzero magnitudes (many tiny effects,
    a few large ones)."""
    v = np.abs(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v) & (v > 0)]
    lt = float(np.quantile(v, 0.25)) if len(v) else 1.0
    for axis, scale in ((ax.xaxis, ax.set_xscale), (ax.yaxis, ax.set_yscale)):
        scale("symlog", linthresh=lt)
        base = axis.get_major_formatter()
        # the ticks at +-linthresh sit right beside 0: label 0 and the decades outside the linear range only
        axis.set_major_formatter(
            FuncFormatter(lambda t, pos, base=base: "" if 0 < abs(t) <= lt * 1.001 else base(t, pos))
        )
