"""The lesion explorer: delete units of a trained network in the browser and watch it cope.

``lesion serve MODEL --dataset D`` runs it; from Python::

    explorer = Explorer(model, (x_test, y_test), classes=data.classes)
    with running(create_app(explorer)) as url:  # a background server on 127.0.0.1
        ...

A language model gets a page of blocks (its attention heads and MLP neurons) and the evaluation text
per token: ``create_app(explorer_for_text(model, token_ids, tokenizer))``.

The page is plain HTML, JS and SVG (no build step) under ``static/``; the JSON API is documented by
the server at ``/docs``. Needs the ``serve`` extra (fastapi, uvicorn).
"""

from lesion.serve._http import LOCAL_HOSTS, bind, is_loopback, running, server, url_of
from lesion.serve.app import create_app
from lesion.serve.explorer import Explorer, compact, explorer_for
from lesion.serve.text import TextExplorer, explorer_for_text

__all__ = [
    "LOCAL_HOSTS", "Explorer", "TextExplorer", "bind", "compact", "create_app", "explorer_for",
    "explorer_for_text", "is_loopback", "running", "server", "url_of",
]  # fmt: skip
