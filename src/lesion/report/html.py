"""``report.html`` (one self-contained file, figures embedded) and ``report.md`` of a reproduce run."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lesion.experiments.claims import MAX_N

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1180px;
padding:24px;color:#1d2330}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:20px;margin:36px 0 6px;border-top:1px solid #dde;padding-top:18px}
.meta{color:#5a6270;font-size:13px}table{border-collapse:collapse;width:100%;font-size:13.5px;margin:10px 0}
th,td{border-bottom:1px solid #e4e6ec;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f5f6f9}
.ok{color:#0a7a3b;font-weight:600}.no{color:#b42318;font-weight:600}
.badge{display:inline-block;border-radius:10px;padding:1px 9px;font-size:12px;font-weight:600}
.badge.ok{background:#dcf5e6}.badge.no{background:#fde2df}.open{color:#9a6700;font-weight:600}
.badge.open{background:#fff1c2}.ci{white-space:nowrap;font-variant-numeric:tabular-nums}td:nth-child(5){min-width:150px}
figure{margin:12px 0}figure img{max-width:100%;border:1px solid #eceef2}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:14px;background:#f8f9fb;padding:10px 14px;margin:8px 0;
border-radius:6px}.pair b{display:block;font-size:12px;text-transform:uppercase;color:#5a6270}
code{background:#f1f2f5;padding:1px 4px;border-radius:3px}
"""


VERDICTS = ("holds", "does not hold", "inconclusive")


@dataclass(frozen=True)
class Section:
    """One figure of the report: its id, title, source, image (PNG), its claims, and links to what the
    study wrote beside its tables ((text, address relative to the run directory): an atlas)."""

    id: str
    title: str
    source: str
    png: Path
    claims: Sequence[dict[str, Any]]
    links: Sequence[tuple[str, str]] = ()


def write_html(path: Path, sections: Sequence[Section], manifest: dict[str, Any]) -> None:
    claims = [c for s in sections for c in s.claims]
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>lesion reproduce: "
        f"{_e(manifest['profile']['name'])}</title><style>{CSS}</style></head><body>",
        _header(claims, manifest),
        _claims_table(claims, {c["id"]: s.id for s in sections for c in s.claims}),
    ]
    for s in sections:
        img = base64.b64encode(s.png.read_bytes()).decode()
        parts.append(
            f"<h2 id='{_e(s.id)}'>{_e(s.id)}: {_e(s.title)}</h2><div class='meta'>{_e(s.source)}</div>"
        )
        parts.append(
            f"<figure><img alt='{_e(s.id)}: {_e(s.title)}' src='data:image/png;base64,{img}'></figure>"
        )
        if s.links:
            items = ", ".join(f"<a href='{_e(href)}'>{_e(text)}</a>" for text, href in s.links)
            parts.append(f"<p class='links'>Open {items} (written by this run, beside its jobs).</p>")
        for c in s.claims:
            parts.append(
                f"<p><span class='badge {_cls(c)}'>{c['id']}: {c['verdict']}</span> {_e(c['claim'])}</p>"
                f"<div class='pair'><div><b>Paper</b>{_e(c['paper'])}</div>"
                f"<div><b>Measured here</b>{_e(c['measured'])}</div></div>"
                f"{_checks_html(c)}"
            )
    parts.append(_footer(manifest))
    path.write_text("".join(parts) + "</body></html>", encoding="utf-8")


def _checks_html(c) -> str:
    rows = "".join(
        f"<tr><td>{_e(t['name'])}</td><td class='ci'>{_num(t['estimate'])} [{_num(t['ci_low'])}, "
        f"{_num(t['ci_high'])}]</td><td>{_e(_criterion(t))}</td><td>{t['n']} {_e(t['unit'])}</td>"
        f"<td>{_e(t['method'])}</td><td class='{_cls_of(t['verdict'])}'>{_e(t['verdict'])}"
        f"{_e(_power(t))}</td></tr>"
        for t in c["tests"]
    )
    return (
        "<table><thead><tr><th>statistic</th><th>estimate [95% interval]</th><th>criterion</th><th>n</th>"
        f"<th>interval from</th><th>verdict</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _criterion(t) -> str:
    if t["direction"] == "within":
        return f"|statistic| < {t['criterion']:g}"
    return f"{t['direction']} {t['criterion']:g}"


def _power(t) -> str:
    if t["verdict"] != "inconclusive":
        return ""
    if t["ci_low"] is None:
        return "; no interval: too few measurements"
    if t.get("needed_n") is None:
        return "; the estimate sits on the criterion: no number of samples would decide it"
    return f"; {_about(t['needed_n'])} {t['unit']} would decide it (80% power, same effect)"


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _header(claims, m) -> str:
    counts = {v: [c["id"] for c in claims if c["verdict"] == v] for v in VERDICTS}
    verdict = (
        f"<b>{len(counts['holds'])} of {len(claims)} claims hold</b>"
        + "".join(f"; {v}: {', '.join(ids)}" for v, ids in counts.items() if v != "holds" and ids)
        + "."
    )
    load = m.get("machine", {}).get("load", {})
    if load.get("start") and load.get("end"):
        verdict += (
            f" Machine load (1-minute average) {load['start'][0]:.2f} at the start, {load['end'][0]:.2f} "
            f"at the end, on {m['machine']['cpus']} CPUs."
        )
    p = m["profile"]
    return (
        f"<h1>On the importance of single directions for generalization: reproduced with lesion</h1>"
        f"<div class='meta'>Profile <code>{_e(p['name'])}</code> · MLP data "
        f"<code>{_e(p['dataset'])}</code> · "
        f"conv data <code>{_e(p['conv_dataset'])}</code> · {m['jobs']['total']} jobs "
        f"({m['jobs']['computed']} computed in this invocation, {m['jobs']['reused']} reused) · "
        f"{m['timing']['job_seconds_total']:.0f} s of job time on {m['workers']} worker(s); this invocation "
        f"{m['timing']['wall_seconds']:.0f} s · lesion {_e(m['versions']['lesion'])}, torch "
        f"{_e(m['versions']['torch'])} · {_e(m['created'])}</div><p>{verdict} Each section shows "
        "the figure, the "
        "paper's claim with its number, and ours. A claim's criterion is stated in the claim itself; each "
        "statistic carries a 95% interval (bootstrap over networks and random orders, seed 0, or the "
        "test the claim names): a claim holds when its interval clears the criterion, does not hold "
        "when it lies on the other side, and is inconclusive when it straddles it.</p>"
    )


def _claims_table(claims, section_of: dict[str, str]) -> str:
    rows = "".join(
        f"<tr><td><a href='#{_e(section_of.get(c['id'], c['id']))}'>{_e(c['id'])}</a></td>"
        f"<td>{_e(c['claim'])}</td>"
        f"<td>{_e(c['paper'])}</td><td>{_e(c['measured'])}</td><td>{_interval_html(c)}</td><td "
        f"class='{_cls(c)}'>{_e(c['verdict'])}{_e(_claim_power(c))}"
        "</td></tr>"
        for c in claims
    )
    return (
        "<table><thead><tr><th>id</th><th>claim</th><th>paper</th><th>measured</th><th>statistic [95% "
        "interval], n</th><th>verdict</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _footer(m) -> str:
    slow = sorted(m["timing"]["jobs"], key=lambda j: -j["seconds"])[:8]
    rows = "".join(
        f"<tr><td>{_e(j['kind'])}</td><td><code>{_e(j['key'])}</code></td><td>{j['seconds']:.1f}</td>"
        f"<td>{_e(', '.join(j['figures']))}</td></tr>"
        for j in slow
    )
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    return (
        f"<h2>Run</h2><p class='meta'>{_e(versions)}. Workers {m['workers']}, {m['threads']} torch "
        "thread(s) per "
        f"job. Configuration, seeds and every job's time are in <code>manifest.json</code>; tables in "
        "<code>tables/</code>, one Parquet file per figure table.</p><table><thead><tr><th>slowest jobs</th>"
        f"<th>key</th><th>seconds</th><th>figures</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _interval_html(c) -> str:
    t = c["tests"][0]
    return (
        f"<span class='ci'>{_num(t['estimate'])} [{_num(t['ci_low'])}, {_num(t['ci_high'])}]</span><br>"
        f"n = {t['n']} {_e(t['unit'])}"
    )


def _interval(c) -> str:
    t = c["tests"][0]
    return f"{_num(t['estimate'])} [{_num(t['ci_low'])}, {_num(t['ci_high'])}], n = {t['n']} ({t['unit']})"


def _claim_power(c) -> str:
    if c["verdict"] != "inconclusive":
        return ""
    if c["ci_low"] is None:
        return " (no interval: too few measurements)"
    if c.get("needed_n") is None:
        return " (no number of samples would decide it: the estimate sits on the criterion)"
    unit = next(t["unit"] for t in c["tests"] if t["verdict"] == "inconclusive")
    return f" ({_about(c['needed_n'])} {unit} would decide it)"


def _about(n: int) -> str:
    return f"more than {MAX_N:,}" if n >= MAX_N else f"about {n:,}"


def write_markdown(path: Path, sections: Sequence[Section], manifest: dict[str, Any]) -> None:
    claims = [c for s in sections for c in s.claims]
    n_ok = sum(c["verdict"] == "holds" for c in claims)
    lines = [
        f"# lesion reproduce: profile `{manifest['profile']['name']}`",
        "",
        f"{n_ok} of {len(claims)} claims hold. Wall time {manifest['timing']['wall_seconds']:.0f} s "
        f"({manifest['jobs']['computed']} jobs computed, {manifest['jobs']['reused']} reused).",
        "",
        "| id | claim | paper | measured | statistic [95% interval], n | verdict |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {c['id']} | {_md(c['claim'])} | {_md(c['paper'])} | {_md(c['measured'])} | {_md(_interval(c))} | "
        f"{c['verdict'] if c['verdict'] == 'holds' else '**' + c['verdict'] + '**'}{_md(_claim_power(c))} |"
        for c in claims
    ]
    for s in sections:
        lines += [
            "",
            f"## {s.id}: {s.title}",
            "",
            f"*{s.source}*",
            "",
            f"![{s.id}](figures/{s.png.name})",
            "",
        ]
        lines += [f"[{text}]({href})" for text, href in s.links] + ([""] if s.links else [])
        for c in s.claims:
            lines.append(f"- **{c['id']}** ({c['verdict']}): measured {c['measured']}")
            lines += [
                f"  - {t['name']}: {_num(t['estimate'])} [{_num(t['ci_low'])}, {_num(t['ci_high'])}], "
                f"criterion {_criterion(t)}, n = {t['n']} {t['unit']} ({t['method']}): "
                f"{t['verdict']}{_power(t)}"
                for t in c["tests"]
            ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _cls(c) -> str:
    return _cls_of(c["verdict"])


def _cls_of(verdict: str) -> str:
    return {"holds": "ok", "inconclusive": "open"}.get(verdict, "no")


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _md(x: str) -> str:
    return str(x).replace("|", "\\|")
