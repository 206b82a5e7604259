"""The Typer app of the ``lesion`` command line and the wrapper every command is registered with: a
``LesionError`` ends a command with ``error: <message>`` on stderr and exit code 2, a ``LesionNote`` is
printed as ``note: ...``. The commands live in ``lesion.cli.model`` (one model file) and
``lesion.cli.runs`` (many studies, the bench, the explorer); ``lesion.cli`` imports both."""

import functools
from collections.abc import Callable

import typer

from lesion.cli import text as T
from lesion.errors import LesionError

app = typer.Typer(
    name="lesion",
    help="Lesion studies of PyTorch networks: delete neurons and feature maps, measure the effect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

EXIT_USER_ERROR = 2


def main() -> None:
    """Entry point of the ``lesion`` script."""
    import importlib

    from lesion.util.alloc import tune_allocator

    for commands in ("lesion.cli.model", "lesion.cli.runs"):  # register every command
        importlib.import_module(commands)

    tune_allocator()
    app()


def _command(fn: Callable) -> Callable:
    """Register ``fn`` as a command whose LesionErrors become ``error: ...`` and exit code 2, and whose
    LesionNotes (what lesion assumed or converted) are printed as ``note: ...``."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            with T.notes():
                return fn(*args, **kwargs)
        except LesionError as exc:
            T.err().print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USER_ERROR) from None

    return app.command()(run)
