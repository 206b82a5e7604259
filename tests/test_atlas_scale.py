"""atlas.html at GPT-2-small scale: 37,008 synthetic cards (36,864 MLP neurons and 144 heads, most of
them estimated by triage) written by ``write_atlas``; the file's size, its data read back, and in real
Chromium a search and a sort over every row, each answered in under a second."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from lesion.roles.assemble import Atlas
from lesion.roles.atlas import write_atlas
from lesion.roles.card import Card
from lesion.roles.page import cards_of, page_cards
from lesion.roles.pushes import LM_HOW
from lesion.roles.rules import table
from lesion.roles.tokens import OMITTED

CHROMIUM = Path("/usr/bin/chromium")
BLOCKS, NEURONS, HEADS = 12, 3072, 12
N = BLOCKS * (NEURONS + HEADS)  # 37,008
MAX_MB = 40  # the page of a GPT-2-small atlas stays under this many megabytes
EXACT = 186  # units measured exactly (the automatic budget, 0.5%)


def rows(page) -> list[str]:
    return page.eval_on_selector_all("#units tbody tr", "rs => rs.map(r => r.dataset.unit)")


def _card(rng, layer: str, j: int, head: bool, exact: bool, vocab: int = 50257) -> Card:
    top = rng.integers(0, 1024, 8).tolist()
    bottom = rng.integers(0, 1024, 8).tolist()
    est = float(rng.normal(0, 1e-3))
    common = {
        "unit": f"{layer}:{j}", "layer": layer, "index": j, "n_examples": 8,
        "kind": "attention head" if head else "neuron (every position)",
        "mean": float(rng.normal()), "sd": float(rng.random()), "lo": -1.0, "hi": 2.0,
        "frequency_active": float(rng.random()), "hist_counts": tuple(rng.integers(0, 200, 20).tolist()),
        "hist_edges": tuple(np.linspace(-1, 2, 21).tolist()),
        "top_index": tuple(top), "top_activity": tuple(np.sort(rng.normal(size=8))[::-1].tolist()),
        "bottom_index": tuple(bottom), "bottom_activity": tuple(np.sort(rng.normal(size=8)).tolist()),
        "preferred_tokens": tuple(rng.integers(0, vocab, 5).tolist()),
        "preferred_token_means": tuple(rng.normal(size=5).tolist()),
        "previous_tokens": tuple(rng.integers(0, vocab, 5).tolist()),
        "previous_token_means": tuple(rng.normal(size=5).tolist()),
        "promotes": tuple(rng.integers(0, vocab, 5).tolist()), "promotes_by": tuple(rng.random(5).tolist()),
        "suppresses": tuple(rng.integers(0, vocab, 5).tolist()),
        "suppresses_by": tuple((-rng.random(5)).tolist()), "push_path": LM_HOW,
        "loss_zero_estimate": est, "explanation": "activity by token: " + "; ".join(
            f"{t}={v:.6g}" for t, v in zip(rng.integers(0, vocab, 10), rng.normal(size=10), strict=True)),
        "simulation": float(rng.random()), "pairs_how": "the 16 units with the largest single effect ...",
    }  # fmt: skip
    if exact:
        m = abs(est) * 3
        return Card(**common, effect_source="exact", loss_zero=m, loss_zero_lo=m / 2, loss_zero_hi=1.5 * m,
                    accuracy_zero=-0.01, loss_resample=m, role=f"needed: {m:+.3g} loss", role_rule="needed",
                    next_tokens=(1, 2, 3, 4, 5), next_token_loss=(0.5, 0.4, 0.3, 0.2, 0.1),
                    omissions=(OMITTED,))  # fmt: skip
    return Card(**common, effect_source="estimated", loss_zero=est,
                role=f"not measured exactly: estimated {est:+.3g} loss (attribution)", role_rule="estimated",
                omissions=(OMITTED, "effects: estimated by attribution only (triage)"))  # fmt: skip


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    rng = np.random.default_rng(0)
    exact = set(rng.choice(N, EXACT, replace=False).tolist())
    cards, i = [], 0
    for b in range(BLOCKS):
        for layer, width, head in ((f"transformer.h.{b}.attn", HEADS, True), (f"transformer.h.{b}.mlp.act",
                                                                                NEURONS, False)):  # fmt: skip
            for j in range(width):
                cards.append(_card(rng, layer, j, head, i in exact))
                i += 1
    meta = {"task": "causal-lm", "labels": False, "n_examples": 8, "n_tokens": 1024, "pairs_tried": 40,
            "rules": table(), "omissions": [OMITTED], "triage": {"exact": EXACT, "top": 93, "sampled": 93,
            "k": 46, "recall": 0.8, "low": 0.5, "high": 1.0, "level": 0.95}}  # fmt: skip
    atlas = Atlas(cards, meta)
    out = tmp_path_factory.mktemp("big") / "atlas"
    start = time.perf_counter()
    write_atlas(out, atlas, title="GPT-2-small-shaped (synthetic cards)")
    return out, atlas, time.perf_counter() - start


def test_the_page_of_37008_units_is_small_enough_and_reads_back(big):
    out, atlas, seconds = big
    mb = (out / "atlas.html").stat().st_size / 1e6
    print(f"atlas.html of {N} cards: {mb:.1f} MB, written in {seconds:.1f} s")
    assert mb < MAX_MB, f"atlas.html is {mb:.1f} MB"
    import json

    doc = json.loads((out / "cards.json").read_text())
    back = cards_of(doc)
    assert len(back) == N and back[17]["unit"] == atlas.cards[17].unit
    want = atlas.cards[17].row()
    for key in ("role", "effect_source", "omissions", "push_path", "promotes", "top_index"):
        assert back[17][key] == want[key], key
    assert back[17]["loss_zero"] == pytest.approx(want["loss_zero"], rel=1e-3)
    assert "hist_edges" not in back[17]  # the page draws equal-width bins from lo to hi
    assert seconds < 120


def test_page_doc_round_trips_a_small_table():
    cards = [Card("a:0", "a", 0, "neuron", 3, mean=0.123456789, omissions=("x", "y"), role="r"),
             Card("a:1", "a", 1, "neuron", 3, mean=math.nan, omissions=("y",), role="r")]  # fmt: skip
    doc = page_cards(cards)
    assert doc["const"]["n_examples"] == 3 and doc["omitted"] == ["x", "y"]
    back = cards_of(doc)
    assert back[0]["mean"] == 0.1235 and back[1]["mean"] is None
    assert [c["omissions"] for c in back] == [["x", "y"], ["y"]]


ANSWER = """async (act) => {
  const t0 = performance.now();
  act();
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return performance.now() - t0;
}"""  # milliseconds from an action to the next painted frame after it


def _timed(page, action: str) -> float:
    return page.evaluate(ANSWER.replace("act()", action))


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    from tests.serve_support import chromium

    yield from chromium(playwright_api, CHROMIUM)


def test_search_and_sort_of_every_row_answer_in_under_a_second(big, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto((big[0] / "atlas.html").resolve().as_uri(), timeout=120_000)
    page.wait_for_selector("#units tbody tr", timeout=120_000)
    assert page.inner_text("#shown") == f"showing 500 of {N} matches"
    box = 'const box = document.getElementById("search");'
    search = _timed(page, box + ' box.value = "needed"; box.dispatchEvent(new Event("input"))')
    assert page.inner_text("#shown") == f"{EXACT} shown"
    start = time.perf_counter()
    page.fill("#search", "transformer.h.7.mlp")  # typed as a user types, every row searched
    page.wait_for_function("document.getElementById('shown').textContent.startsWith('showing 500 of 3072')")
    typed = time.perf_counter() - start
    page.fill("#search", "")
    by_unit = _timed(page, "document.querySelector(\"th[data-key='unit']\").click()")
    assert rows(page)[:2] == ["transformer.h.0.attn:0", "transformer.h.0.attn:1"]
    page.click("th[data-key='unit']")
    assert rows(page)[0] == "transformer.h.11.mlp.act:3071"
    by_role = _timed(page, "document.querySelector(\"th[data-key='role']\").click()")
    page.click("#more")
    assert len(page.query_selector_all("#units tbody tr")) == 1000
    page.fill("#search", "h.0.attn:3")
    page.click("#units tbody tr[data-unit='transformer.h.0.attn:3']")
    card = page.wait_for_selector(".lesion-card[data-unit='transformer.h.0.attn:3']")
    assert "promotes (direct path)" in card.inner_text()
    page.close()
    assert not problems, problems
    print(f"in the page: search {search:.0f} ms, sort by unit {by_unit:.0f} ms, by role {by_role:.0f} ms; "
          f"typed into the box through Playwright: {typed:.2f} s")  # fmt: skip
    assert search < 1000 and by_unit < 1000 and by_role < 1000 and typed < 1.0
