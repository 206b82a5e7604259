"""The transformer explorer in real Chromium (Debian's package) driven by Playwright: on a small trained
GPT-2, clicking a head and a neuron shows the same loss change as the Python API (``lesion.sweep`` with
``NextTokenLoss``), and the text shows each token's own change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("transformers")
playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

import lesion  # noqa: E402
from lesion.serve import create_app, explorer_for_text, running  # noqa: E402
from lesion.serve.text import token_losses  # noqa: E402
from tests.serve_support import chromium, hook_count, weights_digest  # noqa: E402
from tests.text_support import ToyTokenizer, pattern, tiny_gpt  # noqa: E402

HEAD = "transformer.h.0.attn:3"


@pytest.fixture(scope="module")
def setup():
    model, tokens = tiny_gpt(), pattern(6, seed=1)
    explorer = explorer_for_text(model, tokens, ToyTokenizer(), name="tiny-gpt")
    with running(create_app(explorer)) as url:
        yield model, tokens, explorer, url


@pytest.fixture(scope="module")
def browser():
    yield from chromium(playwright_api, CHROMIUM)


@pytest.fixture
def page(browser, setup):
    problems: list[str] = []
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = context.new_page()
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    yield pg
    context.close()
    assert not problems, problems


def python_api(model, tokens, units, replacement=None) -> tuple[float, float]:
    """(loss, delta_loss) of the lesion from lesion.sweep with NextTokenLoss: what the page must show."""
    les = lesion.Lesion(units) if replacement is None else lesion.Lesion(units, replacement)
    df = lesion.sweep(model, {"input_ids": tokens}, [les], lesion.metrics.NextTokenLoss())
    return float(df["loss"][0]), float(df["delta_loss"][0])


def shown(page, lesion_text: str) -> tuple[str, str, float]:
    """(loss text, loss change text, loss value) once the page shows the lesion ``lesion_text``."""
    loss = page.wait_for_selector(f"#loss[data-lesion='{lesion_text}']", state="attached")
    return loss.inner_text(), page.inner_text("#loss-delta"), float(loss.get_attribute("data-value"))


def signed(v: float) -> str:
    return f"{'+' if v >= 0 else '−'}{abs(v):.4f}"


def busiest_neuron(model, tokens) -> str:
    """The block-1 neuron whose deletion alone changes the loss most (so the click visibly matters)."""
    units = [f"transformer.h.1.mlp.act:{j}" for j in range(64)]
    df = lesion.sweep(model, {"input_ids": tokens}, units, lesion.metrics.NextTokenLoss())
    return units[int(df["delta_loss"].abs().argmax())]


def open_page(page, url: str, lesion_text: str = ""):
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector(f"#loss[data-lesion='{lesion_text}']", state="attached")


def test_click_a_head_and_a_neuron(setup, page):
    model, tokens, _, url = setup
    # the Python API's answers first: the server borrows the same model (with hooks) while it evaluates
    neuron = busiest_neuron(model, tokens)
    want = {key: python_api(model, tokens, units) for key, units in
            (("none", []), ("head", [HEAD]), ("both", [HEAD, neuron]), ("neuron", [neuron]))}  # fmt: skip
    before, hooks = weights_digest(model), hook_count(model)
    open_page(page, url)
    assert shown(page, "")[0] == f"{want['none'][0]:.4f}"
    assert page.locator(".block").count() == 2
    assert page.locator(".block").nth(0).locator(".head").count() == 4
    assert page.locator(".block").nth(1).locator(".neuron").count() == 64
    assert page.inner_text(".seq >> nth=0").split()[1:] == [f"t{i}" for i in tokens[0].tolist()]

    page.click(f"[data-id='{HEAD}']")
    loss, delta = want["head"]
    text, delta_text, value = shown(page, HEAD)
    assert (text, delta_text) == (f"{loss:.4f}", signed(delta)) and abs(delta) > 0.05
    assert value == pytest.approx(loss, abs=1e-9)
    assert "deleted" in page.get_attribute(f"[data-id='{HEAD}']", "class")

    page.click(f"[data-id='{neuron}']")
    loss, delta = want["both"]
    text, delta_text, _ = shown(page, f"{HEAD} {neuron}")
    assert (text, delta_text) == (f"{loss:.4f}", signed(delta))
    assert page.inner_text("#lesion-count").startswith("2 units deleted (1 head, 1 neuron)")

    page.click(f"[data-id='{HEAD}']")  # a second click restores the head: the neuron alone is left
    loss, delta = want["neuron"]
    assert shown(page, neuron)[:2] == (f"{loss:.4f}", signed(delta)) and abs(delta) >= 5e-5
    assert "deleted" not in page.get_attribute(f"[data-id='{HEAD}']", "class")
    assert f"u={neuron}" in page.url
    assert weights_digest(model) == before and hook_count(model) == hooks


def test_tokens_show_their_own_loss_change(setup, page):
    model, tokens, _, url = setup
    with lesion.ablate(model, HEAD):
        _, lesioned = token_losses(model, tokens)
    _, intact = token_losses(model, tokens)
    want = lesioned - intact  # (6, 11): token t + 1 of each sequence
    open_page(page, f"{url}/?u={HEAD}", HEAD)
    delta = lambda s, t: float(page.get_attribute(f".tok[data-seq='{s}'][data-pos='{t}']", "data-delta"))  # noqa: E731
    got = np.array([[delta(s, t) for t in range(1, 12)] for s in range(6)])
    np.testing.assert_allclose(got, want, atol=1e-6)
    s, t = np.unravel_index(np.argmax(want), want.shape)  # the most hurt token is drawn red
    colour = page.eval_on_selector(f".tok[data-seq='{s}'][data-pos='{t + 1}']", "e => e.style.background")
    r, g, b = (int(v) for v in colour[4:-1].split(","))
    assert r > 150 and r > g + 60 and r > b + 60, colour
    assert "first" in page.get_attribute(".tok[data-seq='0'][data-pos='0']", "class")  # never predicted


def test_mean_replacement_and_reset(setup, page):
    model, tokens, _, url = setup
    mean, zero = (
        python_api(model, tokens, [HEAD], lesion.replacements.Mean()),
        python_api(model, tokens, [HEAD]),
    )
    open_page(page, f"{url}/?u={HEAD}&r=mean", HEAD)
    loss, delta = mean
    assert shown(page, HEAD)[:2] == (f"{loss:.4f}", signed(delta))
    assert page.input_value("#replacement") == "mean"
    page.select_option("#replacement", "zero")
    loss, delta = zero
    page.wait_for_function(f"document.getElementById('loss').textContent === '{loss:.4f}'")
    assert page.inner_text("#loss-delta") == signed(delta)
    page.click("#reset")
    assert shown(page, "")[1] == "+0.0000"
    assert page.inner_text("#lesion-count") == "no units deleted"


def test_colour_units_by_their_importance(setup, page):
    _, _, explorer, url = setup
    want = explorer.importance()  # (cached) the same numbers the server sends
    open_page(page, url)
    page.click("#importance")
    page.wait_for_selector("body[data-importance=true]", state="attached")
    for site, index in (("transformer.h.0.attn", 3), ("transformer.h.1.mlp.act", 7)):
        cell = f"[data-id='{site}:{index}']"
        assert float(page.get_attribute(cell, "data-delta")) == pytest.approx(want[site][index], abs=1e-12)
    colour = page.eval_on_selector(f"[data-id='{HEAD}']", "e => e.style.background")  # hurts most: red
    r, g, b = (int(v) for v in colour[4:-1].split(","))
    assert r > 150 and r > g + 60 and r > b + 60, colour
    page.click(f"[data-id='{HEAD}']")  # still a toggle, drawn as deleted over its colour
    shown(page, HEAD)
    assert page.eval_on_selector(f"[data-id='{HEAD}']", "e => getComputedStyle(e).backgroundColor") == (
        "rgb(17, 24, 39)"
    )


def test_token_strings_are_text_never_markup(browser, setup):
    model, tokens, _, _ = setup

    class Hostile:
        def convert_ids_to_tokens(self, ids):
            return [f"<img src=x onerror=\"document.body.dataset.owned='{i}'\">" for i in ids]

    explorer = explorer_for_text(model, tokens[:1], Hostile())
    with running(create_app(explorer)) as url:
        page = browser.new_page()
        try:
            open_page(page, url)
            assert page.locator("#text img").count() == 0
            assert page.inner_text(".tok[data-seq='0'][data-pos='1']").startswith("<img src=x")
            assert page.get_attribute("body", "data-owned") is None
        finally:
            page.close()
