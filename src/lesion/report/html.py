"""``report.html`` (one self-contained file, figures embedded) and ``report.md`` of a reproduce run."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
.badge.ok{background:#dcf5e6}.badge.no{background:#fde2df}
figure{margin:12px 0}figure img{max-width:100%;border:1px solid #eceef2}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:14px;background:#f8f9fb;padding:10px 14px;margin:8px 0;
border-radius:6px}.pair b{display:block;font-size:12px;text-transform:uppercase;color:#5a6270}
code{background:#f1f2f5;padding:1px 4px;border-radius:3px}
"""


@dataclass(frozen=True)
class Section:
    """One figure of the report: its id, title, source, image (PNG) and its claims."""

    id: str
    title: str
    source: str
    png: Path
    claims: Sequence[dict[str, Any]]


def write_html(path: Path, sections: Sequence[Section], manifest: dict[str, Any]) -> None:
    claims = [c for s in sections for c in s.claims]
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>lesion reproduce: "
        f"{_e(manifest['profile']['name'])}</title><style>{CSS}</style></head><body>",
        _header(claims, manifest),
        _claims_table(claims),
    ]
    for s in sections:
        img = base64.b64encode(s.png.read_bytes()).decode()
        parts.append(
            f"<h2 id='{_e(s.id)}'>{_e(s.id)}: {_e(s.title)}</h2><div class='meta'>{_e(s.source)}</div>"
        )
        parts.append(
            f"<figure><img alt='{_e(s.id)}: {_e(s.title)}' src='data:image/png;base64,{img}'></figure>"
        )
        for c in s.claims:
            verdict = "holds" if c["holds"] else "does not hold"
            parts.append(
                f"<p><span class='badge {_cls(c)}'>{c['id']}: {verdict}</span> {_e(c['claim'])}</p>"
                f"<div class='pair'><div><b>Paper</b>{_e(c['paper'])}</div>"
                f"<div><b>Measured here</b>{_e(c['measured'])}</div></div>"
            )
    parts.append(_footer(manifest))
    path.write_text("".join(parts) + "</body></html>", encoding="utf-8")


def _header(claims, m) -> str:
    n_ok = sum(c["holds"] for c in claims)
    failing = [c["id"] for c in claims if not c["holds"]]
    verdict = f"<b>{n_ok} of {len(claims)} claims hold</b>" + (
        f"; these do not: {', '.join(failing)}." if failing else "."
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
        "paper's claim with its number, and ours. A claim's criterion is stated in the claim itself.</p>"
    )


def _claims_table(claims) -> str:
    rows = "".join(
        f"<tr><td><a href='#{_e(_section_of(c['id']))}'>{_e(c['id'])}</a></td><td>{_e(c['claim'])}</td>"
        f"<td>{_e(c['paper'])}</td><td>{_e(c['measured'])}</td><td "
        f"class='{_cls(c)}'>{'yes' if c['holds'] else 'no'}"
        "</td></tr>"
        for c in claims
    )
    return (
        "<table><thead><tr><th>id</th><th>claim</th><th>paper</th><th>measured</th><th>holds</th></tr></thead>"
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


def write_markdown(path: Path, sections: Sequence[Section], manifest: dict[str, Any]) -> None:
    claims = [c for s in sections for c in s.claims]
    n_ok = sum(c["holds"] for c in claims)
    lines = [
        f"# lesion reproduce: profile `{manifest['profile']['name']}`",
        "",
        f"{n_ok} of {len(claims)} claims hold. Wall time {manifest['timing']['wall_seconds']:.0f} s "
        f"({manifest['jobs']['computed']} jobs computed, {manifest['jobs']['reused']} reused).",
        "",
        "| id | claim | paper | measured | holds |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {c['id']} | {_md(c['claim'])} | {_md(c['paper'])} | {_md(c['measured'])} | "
        f"{'yes' if c['holds'] else '**no**'} |"
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
        for c in s.claims:
            lines.append(
                f"- **{c['id']}** ({'holds' if c['holds'] else 'does not hold'}): measured {c['measured']}"
            )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _section_of(claim_id: str) -> str:
    return {"F4b": "F4a", "F7-conv": "F7"}.get(claim_id, claim_id)


def _cls(c) -> str:
    return "ok" if c["holds"] else "no"


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _md(x: str) -> str:
    return str(x).replace("|", "\\|")
