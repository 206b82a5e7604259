"""Redraw docs/figures/explorer.png: the explorer on a model, photographed in Debian's Chromium.

    lesion train --widths 512,512 --dataset mnist5k --epochs 5 --seed 0 --out m.safetensors
    python docs/figures/make_explorer_png.py m.safetensors --out docs/figures/explorer.png

Starts ``lesion serve`` on a free port, deletes the k most important units, inspects the most selective
unit of the last layer, and saves a full-page screenshot at 1440 px wide.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("--out", type=Path, default=Path("docs/figures/explorer.png"))
    p.add_argument("--k", type=int, default=25, help="most important units to delete")
    args = p.parse_args()
    cmd = [sys.executable, "-m", "lesion.cli", "serve", str(args.model), "--port", "0"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as server:
        try:
            url = server.stdout.readline().split()[2]
            photograph(url, args.out, args.k)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {args.out}")


def photograph(url: str, out: Path, k: int) -> None:
    units = httpx.get(f"{url}/api/units", timeout=60).json()
    last = units[-1]["layer"]
    live = [u for u in units if u["layer"] == last and not u["dead"]]
    live.sort(key=lambda u: u["mean_activity"])
    chosen = max(live[len(live) // 2 :], key=lambda u: u["selectivity"])  # selective, and not nearly silent
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        page.fill("#k", str(k))
        page.click("#delete-important")
        page.wait_for_function(f"document.querySelectorAll('.unit.deleted').length === {k}")
        page.wait_for_function("document.getElementById('accuracy').dataset.lesion !== ''")
        page.click(f"[data-id='{last}:{chosen['unit']}']", modifiers=["Shift"])
        page.wait_for_function(
            "[...document.querySelectorAll('#unit-thumbs img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        page.evaluate("document.activeElement.blur()")
        page.mouse.move(0, 0)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
