"""The explorer page in real Chromium (Debian's package) driven by Playwright: what the page shows equals
what the Python API computes for the same lesion."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

import lesion  # noqa: E402
import lesion.analyses.evaluation  # noqa: E402
from lesion.serve import compact, create_app, running  # noqa: E402
from tests.serve_support import chromium, digits_model, hook_count, make_explorer, weights_digest  # noqa: E402

DIGEST: dict[str, str] = {}


@pytest.fixture(scope="module")
def setup():
    model, data = digits_model()
    explorer = make_explorer(model, data)
    DIGEST["before"] = weights_digest(model)
    with running(create_app(explorer)) as url:
        yield model, data, explorer, url


@pytest.fixture(scope="module")
def browser():
    yield from chromium(playwright_api, CHROMIUM)


@pytest.fixture
def problems() -> list[str]:
    return []


@pytest.fixture
def page(browser, setup, problems):
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = context.new_page()
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    yield pg
    context.close()
    assert not problems, problems


def open_page(page, url: str, lesion_text: str | None = None):
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")
    expected = lesion_of(url) if lesion_text is None else lesion_text
    page.wait_for_selector(f"#accuracy[data-lesion='{expected}']", state="attached")
    return page


def lesion_of(url: str) -> str:
    return " ".join(re.findall(r"[?&]u=([^&]+)", url))


def shown(page, lesion_text: str) -> tuple[str, float, str]:
    """(accuracy text, accuracy value, correct text) once the page shows the lesion ``lesion_text``."""
    acc = page.wait_for_selector(f"#accuracy[data-lesion='{lesion_text}']", state="attached")
    return acc.inner_text(), float(acc.get_attribute("data-value")), page.inner_text("#correct")


def python_accuracy(model, data, units) -> lesion.analyses.evaluation.Evaluation:
    xy = (data.x_test, data.y_test)
    if not units:
        return lesion.evaluate(model, xy)
    with lesion.ablate(model, units):
        return lesion.evaluate(model, xy)


def most_harmful(explorer) -> str:
    row = explorer.units.sort_values(["delta_accuracy", "delta_loss"], ascending=[True, False]).iloc[0]
    return f"{row.layer}:{row.unit}"


def test_click_a_unit_then_reset(setup, page):
    model, data, explorer, url = setup
    unit = most_harmful(explorer)
    want = python_accuracy(model, data, [unit])
    intact = python_accuracy(model, data, [])
    assert want.accuracy != intact.accuracy  # the click must visibly change the numbers
    open_page(page, url)
    assert shown(page, "")[0] == f"{intact.accuracy:.4f}"

    page.click(f"[data-id='{unit}']")
    text, value, correct = shown(page, unit)
    assert text == f"{want.accuracy:.4f}" and value == want.accuracy
    assert correct == f"{round(want.accuracy * want.n)} / {want.n} correct"
    assert page.inner_text("#loss") == f"{want.loss:.4f}"
    assert "deleted" in page.get_attribute(f"[data-id='{unit}']", "class")
    assert page.inner_text("#lesion-count").startswith("1 unit deleted")
    assert f"u={unit}" in page.url

    page.click(f"[data-id='{unit}']")  # a second click restores it
    assert shown(page, "")[1] == intact.accuracy
    assert "deleted" not in page.get_attribute(f"[data-id='{unit}']", "class")
    other = "relu2:1" if unit == "relu2:0" else "relu2:0"
    page.click(f"[data-id='{unit}']")
    page.click(f"[data-id='{other}']")
    both = python_accuracy(model, data, [unit, other])
    assert shown(page, " ".join(compact(explorer.selection([unit, other]))))[1] == both.accuracy

    page.click("#reset")
    text, value, _ = shown(page, "")
    assert text == f"{intact.accuracy:.4f}" and value == intact.accuracy
    assert page.inner_text("#loss") == f"{intact.loss:.4f}"
    assert "deleted" not in page.get_attribute(f"[data-id='{unit}']", "class")
    assert "u=" not in page.url
    assert hook_count(model) == 0


def test_the_lesion_lives_in_the_url(setup, page):
    model, data, _, url = setup
    want = python_accuracy(model, data, ["relu1:0-5", "relu2:3"])
    open_page(page, f"{url}/?u=relu1:0-5&u=relu2:3")
    assert shown(page, "relu1:0-5 relu2:3")[1] == want.accuracy
    assert page.inner_text("#lesion-count").startswith("7 units deleted")
    assert page.locator(".unit.deleted").count() == 7


def test_a_bad_link_is_reported_and_ignored(setup, page, problems):
    open_page(page, f"{setup[3]}/?u=relu9:1", lesion_text="")
    assert "unknown layer 'relu9'" in page.inner_text("#banner") and page.is_visible("#banner")
    assert page.locator(".unit.deleted").count() == 0
    assert len(problems) == 1 and "status of 422" in problems[0]  # the refused evaluation, logged
    problems.clear()


def test_delete_k_buttons(setup, page):
    model, data, explorer, url = setup
    open_page(page, url)
    page.fill("#k", "3")
    page.click("#delete-important")
    top = explorer.units.sort_values("delta_loss", ascending=False, kind="stable").head(3)
    units = [f"{r.layer}:{r.unit}" for r in top.itertuples()]
    lesion_text = " ".join(compact(explorer.selection(units)))
    assert shown(page, lesion_text)[1] == python_accuracy(model, data, units).accuracy

    page.click("#delete-selective")
    page.wait_for_function("document.querySelectorAll('.unit.deleted').length === 6")
    page.click("#delete-random")
    page.wait_for_function("document.querySelectorAll('.unit.deleted').length === 9")
    chosen = [el.get_attribute("data-id") for el in page.query_selector_all(".unit.deleted")]
    text = " ".join(compact(explorer.selection(chosen)))
    assert shown(page, text)[1] == python_accuracy(model, data, chosen).accuracy
    assert page.is_visible("#curve-marker")


def test_inspect_a_unit(setup, page):
    _, data, explorer, url = setup
    open_page(page, url)
    page.click("[data-id='relu1:3']", modifiers=["Shift"])  # inspect without deleting
    page.wait_for_selector("#unit-thumbs img")
    assert page.locator(".unit.deleted").count() == 0 and "unit=relu1:3" in page.url
    row = explorer.units.set_index(["layer", "unit"]).loc[("relu1", 3)]
    assert page.inner_text("[data-stat='selectivity']") == f"{row.selectivity:.3f}"
    assert page.inner_text("[data-stat='preferred class']") == data.classes[int(row.preferred_class)]
    page.wait_for_function(
        "[...document.querySelectorAll('#unit-thumbs img')].every(i => i.complete && i.naturalWidth === 8)"
    )
    assert page.locator("#unit-thumbs img").count() == 6
    page.click("#unit-toggle")  # delete it from the detail panel
    shown(page, "relu1:3")
    assert page.inner_text("#unit-toggle") == "restore this unit"


def test_colour_modes_and_screenshot(setup, page, tmp_path):
    _, _, _, url = setup
    open_page(page, f"{url}/?u=relu1:0-3")
    fill = page.get_attribute("[data-id='relu2:0']", "fill")
    page.select_option("#colour-mode", "importance")
    assert page.get_attribute("[data-id='relu2:0']", "fill") != fill and "colour=importance" in page.url
    page.select_option("#colour-mode", "preferred")
    page.click("[data-id='relu2:5']", modifiers=["Shift"])
    page.wait_for_selector("#unit-thumbs img")
    page.click("#zoom-in")
    page.click("#zoom-fit")
    path = tmp_path / "explorer.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_the_api_page_renders_the_openapi_document(setup, page):
    page.goto(f"{setup[3]}/docs")
    page.wait_for_selector("section.op")
    text = page.inner_text("#api")
    for path in ("/api/units", "/api/evaluate", "/api/units/{unit}"):
        assert path in text
    assert "per_class_accuracy" in text


def test_the_model_is_untouched_after_all_the_clicks(setup):
    model = setup[0]
    assert hook_count(model) == 0 and weights_digest(model) == DIGEST["before"]
