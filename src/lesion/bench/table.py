"""The results as a rich table."""

from __future__ import annotations

# -------------------------------------------------------------------------------------------- table


def table(results: dict):
    """A rich Table: per workload and method the seconds, floor, ratio to lesion, max differences."""
    from rich.table import Table

    gemm, m = results["gemm"], results["machine"]
    t = Table(
        title=f"lesion bench: {m['cpu']}, {m['threads']} threads, GEMM {gemm['gflops']:.0f} GFLOP/s, load "
        f"{m['load_average_start'][0]:.2f}->{m['load_average_end'][0]:.2f}",
        caption="ratio: method seconds / lesion seconds; lesion row: lesion seconds / its arithmetic floor. "
        "|Δ|: max abs difference from lesion's accuracy and loss. 'N% timed': the rest extrapolated.",
    )
    for col in ("", "method", "seconds", "floor s", "ratio", "|Δacc|", "|Δloss|", "note"):
        left = col in ("", "method", "note")
        t.add_column(col, justify="left" if left else "right", no_wrap=col != "note")
    for name, w in results["workloads"].items():
        if name == "W4":
            note = f"peak +{w['peak_mb']:.0f} MB"
            t.add_row(name, "lesion", _fmt(w["seconds"]), "", "", "", "", note)
            continue
        if name == "S1":
            for scan, fit in w["scans"].items():
                sizes = f"{fit['sizes'][0]:,}-{fit['sizes'][-1]:,}"
                t.add_row(name, f"lesion vs {scan}", f"{_fmt(fit['seconds'][0])}-{_fmt(fit['seconds'][-1])}",
                          "", "", "", "", f"{sizes}: seconds ~ size^{fit['exponent']:.2f}")  # fmt: skip
            continue
        if name == "W7":
            sec = w["seconds"]
            t.add_row(
                name, "estimate", _fmt(sec["estimate"]), "", "", "", "", f"Spearman {w['spearman']:.3f}"
            )
            t.add_row(name, "exact (W5)", _fmt(sec["exact"]), "", _fmt(w["ratios"]["exact/estimate"], "x"),
                      "", "", "")  # fmt: skip
            continue
        for method, sec in w["seconds"].items():
            peer = method.removesuffix("_best")
            diff = w["max_abs_diff"].get(peer, {})
            ratio = w["ratios"]["lesion/floor"] if method == "lesion" else w["ratios"].get(f"{method}/lesion")
            cells = [_fmt(sec), _fmt(w["floor_seconds"].get(peer)), _fmt(ratio, "x")]
            cells += [_fmt(diff.get(k), sci=True) for k in ("accuracy", "loss")]
            t.add_row(name, method, *cells, _row_note(w, method))
        if w.get("gpu", {}).get("status") == "not measured":  # W8-W11 until a run on a GPU fills them
            gpu = w["gpu"]
            t.add_row(name, f"lesion {gpu['device']} {gpu['precision']}", "not measured", "", "", "", "", "")
        if "bf16" in w:
            b, d = w["bf16"], w["bf16"]["max_abs_diff_from_fp32"]
            note = f"time {b['seconds'] / w['seconds']['lesion']:.2f}x fp32's"
            t.add_row(name, "lesion bf16", _fmt(b["seconds"]), "", "", _fmt(d["accuracy"], sci=True),
                      _fmt(d["loss"], sci=True), note)  # fmt: skip
    return t


def _row_note(w: dict, method: str) -> str:
    if "units_per_second" in w and method == "lesion":  # W8-W11
        ups = next(v for k, v in w["units_per_second"].items() if k.startswith("lesion"))
        recall = w.get("recall")
        said = (
            f", recall {recall['recall']:.2f} [{recall['low']:.2f}, {recall['high']:.2f}]"
            + (" (not bounded by the sample)" if recall["low"] <= 0 else "")
            if recall
            else ""
        )
        gpu = w["gpu"]
        where = f"on {gpu['name']}, {gpu['precision']}" if gpu["status"] == "measured" else "GPU not measured"
        peak = f"peak {w['peak_rss_mb']:.0f} MB" + (
            f", GPU {w['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in w else ""
        )
        return f"{ups:.3g} units/s, {peak}{said}; {where}"
    if method in w.get("unsteady", ()):
        return "no ratio: timed on a busier machine"
    if "peer_units_timed" in w and method != "lesion":
        return f"{w['peer_units_timed']} of {w['n_lesions']} units timed"
    if method.startswith("captum") and not w["captum"].get("available"):
        return "skipped: no captum"
    if method == "captum_best":
        return f"ppe={w['captum']['best_perturbations_per_eval']}"
    ext = w.get("extrapolation", {}).get(method)
    return f"{ext['measured_fraction']:.0%} timed" if ext else ""


def _fmt(x: float | None, suffix: str = "", sci: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:.1e}" if sci else f"{x:.3g}{suffix}" if x < 100 else f"{x:.0f}{suffix}"
