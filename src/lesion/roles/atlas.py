"""The atlas on disk: ``roles.parquet`` (one row per unit), ``cards.json`` (the card data by column, with
the examples' thumbnails: ``lesion.roles.page``; ``cards_of`` reads the cards back) and ``atlas.html``, one
self-contained page (the same data embedded as JSON, the card template ``templates/card.js`` inlined)
that works from a file. Written completely or visibly not at
all: the files are staged and ``manifest.json`` comes last (``lesion.util.outputs.write_folder``).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from lesion.core.batch import Data, batches
from lesion.errors import UnitError
from lesion.roles.assemble import Atlas
from lesion.roles.page import page_cards
from lesion.util.jsonable import jsonable
from lesion.util.outputs import write_folder

TEMPLATES = Path(__file__).parent / "templates"
ATLAS_FILES = ("roles.parquet", "cards.json", "atlas.html")
THUMB = 64  # thumbnail side in pixels at most (small images are scaled up, pixelated, by the page)


def one_card(atlas: Atlas, unit: str) -> Atlas:
    """The atlas of ``unit``'s card alone (the explorers show one card at a time); a UnitError naming
    why where the unit has none."""
    card = next((c for c in atlas.cards if c.unit == unit), None)
    if card is None:
        raise UnitError(f"{unit} has no card: {'; '.join(atlas.meta['omissions'])}")
    return Atlas([card], atlas.meta)


def example_ids(atlas: Atlas) -> list[int]:
    """Every example id a card shows (top and bottom examples), sorted."""
    ids: set[int] = set()
    for c in atlas.cards:
        ids.update(c.top_index)
        ids.update(c.bottom_index)
    return sorted(ids)


def thumbnails(data: Data, ids: Iterable[int], *, batch_size: int = 1000) -> dict[int, str]:
    """``{id: data URI of a PNG}`` for the examples ``ids`` whose input is an image ((C, H, W) with C
    1 or 3, or (H, W)); empty for other inputs (vectors, token ids)."""
    from PIL import Image

    want = set(ids)
    out: dict[int, str] = {}
    for b in batches(data, batch_size=batch_size):
        if len(b.args) != 1 or not isinstance(b.args[0], torch.Tensor):
            return {}
        x = b.args[0]
        if (
            not x.dtype.is_floating_point
            or x.ndim not in (3, 4)
            or (x.ndim == 4 and x.shape[1] not in (1, 3))
        ):
            return {}
        for row, i in enumerate(b.ids.tolist()):
            if i in want:
                out[i] = _png(Image, x[row].detach().float().cpu())
    return out


def _png(Image, img: torch.Tensor) -> str:
    a = img.numpy()
    a = a[0] if a.ndim == 3 and a.shape[0] == 1 else (a.transpose(1, 2, 0) if a.ndim == 3 else a)
    lo, hi = float(a.min()), float(a.max())
    a = np.zeros_like(a) if hi == lo else (a - lo) / (hi - lo)
    pic = Image.fromarray((a * 255).round().astype(np.uint8))
    if max(pic.size) > THUMB:
        pic.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    pic.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def token_texts(
    data: Data, atlas: Atlas, *, before: int = 8, after: int = 3, decode=None
) -> tuple[dict, dict]:
    """A language model's atlas: ``({token id: [token ids of its context window, position of the token
    in it]}, {token id: its text})`` for every token a card shows; ``decode(ids) -> strings`` (a
    tokenizer's ``convert_ids_to_tokens``) names tokens, else ``t<id>``."""
    per = int(atlas.meta.get("tokens_per_sequence") or 0)
    want = example_ids(atlas)
    if not per or not want:
        return {}, {}
    seqs = {i // per for i in want}
    rows: dict[int, list[int]] = {}
    for b in batches(data, batch_size=256):
        ids = b.kwargs.get("input_ids", b.args[0] if b.args else None)
        for row, s in enumerate(b.ids.tolist()):
            if s in seqs:
                rows[s] = ids[row].tolist()
    windows, used = {}, set()
    for i in want:
        seq, pos = rows[i // per], i % per
        lo = max(0, pos - before)
        windows[str(i)] = [seq[lo : pos + after + 1], pos - lo]
        used.update(seq[lo : pos + after + 1])
    for c in atlas.cards:
        used.update(c.preferred_tokens, c.previous_tokens, c.next_tokens)
    used = sorted(used)
    names = list(decode(used)) if decode is not None else [f"t{t}" for t in used]
    return windows, {str(t): str(n) for t, n in zip(used, names, strict=True)}


def page_data(atlas: Atlas, images: dict[int, str], *, title: str, classes=None, texts=None) -> dict:
    """What the page (and the explorer's card) renders: the cards, the rules, the thumbnails, and for a
    language model the context windows of the tokens shown and the tokens' names (``texts``, the pair
    ``token_texts`` returns)."""
    doc = page_frame(atlas, images, title=title, classes=classes, texts=texts)
    return jsonable(doc | {"cards": [c.row() for c in atlas.cards]})


def page_frame(atlas: Atlas, images: dict[int, str], *, title: str, classes=None, texts=None) -> dict:
    """Everything of the page's document but the cards: the title, the meta (with the class names and
    the tokens' names), the thumbnails and the tokens' context windows."""
    meta = dict(atlas.meta)
    if classes is not None:
        meta["classes"] = [str(c) for c in classes]
    windows, names = texts or ({}, {})
    if names:
        meta["token_names"] = names
    doc = {"title": title, "meta": meta}
    return jsonable(doc | {"images": {str(k): v for k, v in images.items()}, "texts": windows})


def script_json(doc: dict) -> str:
    """JSON safe inside a <script> element (no '</', no HTML comment openers)."""
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(doc: dict) -> str:
    """atlas.html: the page template with the card template, styles and data (``page_cards``) inlined."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(["html", "j2"])
    )
    parts = {
        name: (TEMPLATES / name).read_text() for name in ("card.js", "card.css", "atlas.js", "atlas.css")
    }
    return env.get_template("atlas.html.j2").render(
        title=doc["title"],
        data=script_json(doc),
        n=doc["n"],
        card_js=parts["card.js"],
        card_css=parts["card.css"],
        atlas_js=parts["atlas.js"],
        atlas_css=parts["atlas.css"],
    )


def write_atlas(
    out: str | Path,
    atlas: Atlas,
    images: dict[int, str] | None = None,
    *,
    title: str,
    classes=None,
    texts=None,
) -> list[str]:
    """Write the atlas folder completely (manifest last); returns the file names."""
    doc = page_frame(atlas, images or {}, title=title, classes=classes, texts=texts) | page_cards(atlas.cards)

    def write(folder: Path) -> None:
        df = atlas.table()
        df.attrs = {}
        df.to_parquet(folder / "roles.parquet", index=False)
        (folder / "cards.json").write_text(json.dumps(doc, separators=(",", ":"), allow_nan=False))
        (folder / "atlas.html").write_text(render(doc), encoding="utf-8")

    return write_folder(Path(out), write, kind="lesion atlas")
