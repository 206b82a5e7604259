"""The ``lesion`` command line: thin Typer commands over the library. Importing it loads no torch."""

from lesion.cli.app import app, main

__all__ = ["app", "main"]
