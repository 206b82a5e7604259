"""atlas.html in real Chromium (Debian's package) from a file: search by role, sort, open and read a card."""

from __future__ import annotations

from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

from lesion.roles import build  # noqa: E402
from lesion.roles.atlas import write_atlas  # noqa: E402
from tests.serve_support import chromium  # noqa: E402
from tests.toys import Planted, planted_data  # noqa: E402


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    x, y = planted_data(10)
    xt, trained, true = planted_data(10, mislabeled=5)
    result = build(Planted(), (x, y), train=(xt, trained), true_labels=true, pair_units=11)
    out = tmp_path_factory.mktemp("atlas") / "a"
    write_atlas(out, result, {}, title="planted", classes=["zero", "one", "two"])
    return out / "atlas.html", {c.unit: c for c in result.cards}


@pytest.fixture(scope="module")
def browser():
    yield from chromium(playwright_api, CHROMIUM)


@pytest.fixture
def page(browser, atlas):
    problems: list[str] = []
    pg = browser.new_page(viewport={"width": 1400, "height": 900})
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    pg.goto(atlas[0].resolve().as_uri())
    pg.wait_for_selector("#units tbody tr")
    yield pg
    pg.close()
    assert not problems, problems


def rows(page) -> list[str]:
    return page.eval_on_selector_all("#units tbody tr", "rs => rs.map(r => r.dataset.unit)")


def test_search_by_part_of_a_role_and_read_the_card(page, atlas):
    cards = atlas[1]
    assert len(rows(page)) == 11
    page.fill("#search", "memoris")
    assert sorted(rows(page)) == ["act1:4", "act2:4"]
    page.fill("#search", "class-0 det")
    assert sorted(rows(page)) == ["act1:0", "act2:0"]
    page.click("#units tbody tr[data-unit='act1:0']")
    card = page.wait_for_selector(".lesion-card[data-unit='act1:0']")
    assert card.query_selector(".headline").inner_text() == cards["act1:0"].role
    assert page.inner_text("[data-stat='selectivity']") == "1"
    assert page.inner_text("[data-stat='preferred class']") == "0 (zero)"
    zero = page.inner_text("tr[data-replacement='zero']")
    assert f"+{cards['act1:0'].loss_zero:.3f}"[:6] in zero
    assert page.eval_on_selector(".rules tr.matched td", "e => e.textContent") == "class detector"
    assert "act1%3A0" in page.url


def test_partner_links_and_sorting(page, atlas):
    page.click("#units tbody tr[data-unit='act1:1']")
    page.wait_for_selector(".lesion-card[data-unit='act1:1']")
    assert "backed up by act1:2" in page.inner_text(".headline")
    page.click("tr[data-partner='act1:2'] a")
    page.wait_for_selector(".lesion-card[data-unit='act1:2']")
    page.click("th[data-key='unit']")
    assert rows(page)[:3] == ["act1:0", "act1:1", "act1:2"]
    page.click("th[data-key='unit']")
    assert rows(page)[0] == "act2:4"


def test_a_card_opens_from_the_address(page, atlas):
    page.goto(atlas[0].resolve().as_uri() + "#act1%3A3")
    card = page.wait_for_selector(".lesion-card[data-unit='act1:3']")
    assert card.query_selector(".headline").inner_text() == "dead"
    assert page.inner_text("[data-stat='memorisation unit']") == "no"  # dead on both splits
    assert page.inner_text("[data-stat='dead']") == "never active on the data"


def test_the_explorer_shows_the_same_card(browser):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    import json
    import urllib.request

    from lesion.serve import create_app, running
    from tests.serve_support import digits_model, make_explorer

    model, data = digits_model()
    explorer = make_explorer(model, data)
    want = {c.unit: c for c in build(model, (data.x_test, data.y_test), sites=explorer.sites).cards}
    with running(create_app(explorer)) as url:
        with urllib.request.urlopen(f"{url}/api/cards/relu1:3") as r:
            doc = json.loads(r.read())
        assert doc["card"]["role"] == want["relu1:3"].role
        assert doc["card"]["loss_zero"] == pytest.approx(want["relu1:3"].loss_zero)
        assert len(doc["images"]) == len({*want["relu1:3"].top_index, *want["relu1:3"].bottom_index})
        pg = browser.new_page(viewport={"width": 1440, "height": 1000})
        problems: list[str] = []
        pg.on("pageerror", lambda e: problems.append(str(e)))
        pg.goto(url)
        pg.wait_for_selector("body[data-ready=true]")
        pg.click("[data-id='relu1:3']", modifiers=["Shift"])  # inspect without deleting
        pg.click("#unit-card-open")
        card = pg.wait_for_selector("#unit-card .lesion-card[data-unit='relu1:3']")
        assert card.query_selector(".headline").inner_text() == want["relu1:3"].role
        assert len(card.query_selector_all("[data-examples='top'] img")) == len(want["relu1:3"].top_index)
        pg.close()
        assert not problems, problems


def test_the_transformer_explorer_shows_the_same_card(browser):
    pytest.importorskip("fastapi")
    pytest.importorskip("transformers")
    import json
    import urllib.request

    from lesion.serve import create_app, explorer_for_text, running
    from lesion.serve.text import model_input
    from tests.text_support import ToyTokenizer, pattern, tiny_gpt

    model, tokens = tiny_gpt(), pattern(6, seed=1)
    explorer = explorer_for_text(model, tokens, ToyTokenizer(), name="tiny-gpt")
    head = "transformer.h.0.attn:3"
    want = next(c for c in build(model, model_input(model, explorer.tokens), sites=explorer.sites,
                                 batch_size=explorer.batch_size).cards if c.unit == head)  # fmt: skip
    with running(create_app(explorer)) as url:
        with urllib.request.urlopen(f"{url}/api/cards/{head}") as r:
            doc = json.loads(r.read())
        assert doc["card"]["role"] == want.role
        assert doc["card"]["head_previous"] == pytest.approx(want.head_previous)
        assert all(doc["texts"][str(i)][0] for i in want.top_index)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        problems: list[str] = []
        pg.on("pageerror", lambda e: problems.append(str(e)))
        pg.goto(url)
        pg.wait_for_selector("body[data-ready=true]")
        pg.click(f"[data-id='{head}']", modifiers=["Shift"])  # shift-click: the card, no deletion
        card = pg.wait_for_selector(f"#unit-card .lesion-card[data-unit='{head}']")
        assert card.query_selector(".headline").inner_text() == want.role
        assert pg.get_attribute(f"[data-id='{head}']", "aria-pressed") == "false"
        assert "attention on the previous token" in card.inner_text()
        assert card.query_selector_all("[data-examples='top'] mark")  # the token marked in its context
        pg.close()
        assert not problems, problems
