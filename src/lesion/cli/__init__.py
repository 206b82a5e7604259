"""The ``lesion`` command line: thin Typer commands over the library. Importing it loads no torch.

``base`` holds the Typer app and the command wrapper; ``model`` the commands on one model file (layers,
train, analyze, atlas, demo); ``runs`` those that run many studies or serve (reproduce, bench, serve);
``commands``, ``atlas``, ``options`` and ``text`` what they share."""

from lesion.cli import model as _model  # noqa: F401  (registers its commands)
from lesion.cli import runs as _runs  # noqa: F401  (registers its commands)
from lesion.cli.base import app, main

__all__ = ["app", "main"]
