"""What the command line parses and prints: flag values into library arguments, results into rich tables.

Nothing here imports torch; the commands in ``lesion.cli`` call these.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lesion.errors import LesionError
from lesion.pipeline.classifier import RANKED_ORDERS


def out():
    from rich.console import Console

    return Console()


def err():
    from rich.console import Console

    return Console(stderr=True)


def claims_table(claims: list[dict]):
    from rich.table import Table

    colour = {"holds": "green", "does not hold": "red", "inconclusive": "yellow"}
    table = Table("id", "verdict", "statistic [95% interval]", "measured", show_lines=False)
    for c in claims:
        ci = "n/a" if c["ci_low"] is None else f"{c['estimate']:.3g} [{c['ci_low']:.3g}, {c['ci_high']:.3g}]"
        table.add_row(c["id"], f"[{colour[c['verdict']]}]{c['verdict']}[/]", ci, c["measured"])
    return table


# ----------------------------------------------------------------------------------------- flag parsing


def widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise LesionError(f"--widths {text!r}; expected positive integers separated by commas, e.g. 512,512")
    return widths


def fractions(text: str) -> int | None:
    """Number of evenly spaced fractions, or None for every unit count."""
    if text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 2:
        raise LesionError(f"--fractions {text!r}; expected a whole number of points (at least 2) or 'all'")
    return n


def names(given: list[str] | str | None, flag: str = "--layers") -> tuple[str, ...] | None:
    """Names of a list option, each value repeated (``--layers a --layers b``) or comma separated."""
    if given is None:
        return None
    values = [given] if isinstance(given, str) else list(given)
    names = tuple(n.strip() for v in values for n in v.split(",") if n.strip())
    if not names:
        raise LesionError(f"{flag} {','.join(values)!r}; expected names separated by commas")
    return names


# ----------------------------------------------------------------------------------------- training


def checkpoints(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise LesionError(f"--checkpoints {text!r}: expected epochs like 1,2,4,8") from None
    if any(v < 0 for v in values):
        raise LesionError(f"--checkpoints {text!r}: epochs must be 0 or more")
    return values


# ----------------------------------------------------------------------------------------- analysis


def print_summary(s: dict, folder: Path) -> None:
    from rich.table import Table

    auc = s["auc"]
    pooled = next((r for r in s["selectivity_vs_importance"] if r["layer"] == "all"), {})
    table = Table(title=f"{s['model']} on {s['dataset']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("units (candidates, dead)", f"{s['n_units']} ({s['n_candidate_units']}, {s['n_dead']})"),
        ("accuracy train / test", f"{s['train_accuracy']:.4f} / {s['test_accuracy']:.4f}"),
        ("loss train / test", f"{s['train_loss']:.4f} / {s['test_loss']:.4f}"),
        ("train accuracy, all deleted", f"{s['all_deleted_train_accuracy']:.4f}"),
        ("AUC random (mean ± SD)", f"{auc['random_mean']:.4f} ± {auc['random_sd']:.4f}"),
        *((f"AUC {k.replace('_', ' ')} first", f"{v:.4f}") for k, v in auc.items() if k in RANKED_ORDERS),
        ("selectivity vs Δloss, pooled r", fmt(pooled.get("pearson_r"))),
    ]
    _print_summary_table(table, rows, s["seconds"], folder)


def print_lm_summary(s: dict, folder: Path) -> None:
    """The headline numbers of a language-model study."""
    from rich.table import Table

    table = Table(title=f"{s['model']} on {s['dataset']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("units (heads, MLP neurons)", f"{s['n_units']} ({s['n_heads']}, {s['n_neurons']})"),
        ("sequences x tokens", f"{s['n_sequences']} x {s['seq_len']}"),
        ("next-token loss / accuracy", f"{s['loss']:.4f} / {s['accuracy']:.4f}"),
        ("loss, all deleted", f"{s['all_deleted_loss']:.4f}"),
        *((f"top: {u['unit']}", f"Δloss {u['delta_loss']:+.4f}") for u in s["top_units"][:5]),
    ]
    _print_summary_table(table, rows, s["seconds"], folder)


def _print_summary_table(table, rows, seconds: dict, folder: Path) -> None:
    for row in rows:
        table.add_row(*row)
    console = out()
    console.print(table)
    console.print(f"seconds: {', '.join(f'{k} {v:.1f}' for k, v in seconds.items())}", highlight=False)
    console.print(f"wrote tables, figures and summary.json to {folder}", highlight=False)


# ----------------------------------------------------------------------------------------- helpers


def note(text: str) -> None:
    err().print(text, highlight=False)


@contextmanager
def notes() -> Iterator[None]:
    """Inside: every LesionNote (what lesion assumed or converted) is printed as ``note: ...``."""
    from lesion.errors import LesionNote

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, LesionNote):
            note(f"note: {message}")
        else:
            shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", LesionNote)
        warnings.showwarning = show
        yield


def stage(k: int, text: str) -> None:
    err().print(f"[bold cyan]\\[{k}/4][/] {text}", highlight=False)


def fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.3f}"
