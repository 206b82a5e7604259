"""The bodies of the commands that do more than call the library: ``lesion layers`` (a table of the
sites) and ``lesion serve`` (bind, measure, serve). ``lesion.cli.model`` and ``lesion.cli.runs`` hold
their flags."""

from __future__ import annotations

from pathlib import Path

from lesion.cli import text as T
from lesion.errors import LesionError
from lesion.pipeline import classifier as study


def list_sites(model: Path, *, all_: bool, allow_pickle: bool, trust_remote_code: bool) -> None:
    """Print the sites of ``model``: name, module type, unit axis, width, shape (and head dimension)."""
    from rich.table import Table

    from lesion.core.batch import as_batch
    from lesion.core.sites import find_sites
    from lesion.pipeline.lm import example_input

    net, info = study.open_any(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    example = example_input(net, info, model)
    sites = find_sites(net, example, "all" if all_ else None)

    heads = any(s.heads for s in sites)
    table = Table(title=f"{model.name}: {len(sites)} sites, input {as_batch(example).shapes()}")
    table.add_column("name", no_wrap=True)  # whole names, to copy into unit addresses
    for col, justify in (("module", "left"), ("unit axis", "right")):
        table.add_column(col, justify=justify)
    table.add_column("width", justify="right")
    table.add_column("per-example shape", justify="right")
    if heads:
        table.add_column("head dim", justify="right")
    for s in sites:
        row = [s.name, s.module_type, str(s.unit_dim), str(s.width), str(s.shape)]
        table.add_row(*row, *([str(s.group) if s.heads else ""] if heads else []))
    T.out().print(table)


def run_explorer(
    model: Path, *, dataset, port, host, examples, layers, threads, text, tokens, sequences
) -> None:
    """Bind ``host:port`` first (a taken port fails at once), measure the model, serve until Ctrl+C."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise LesionError("lesion serve needs fastapi and uvicorn: pip install 'lesion[serve]'") from None
    from lesion.serve import LOCAL_HOSTS, bind, create_app, explorer_for, is_loopback, server, url_of

    sock = bind(host, port)  # before the measurements: a taken port fails at once
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if not is_loopback(host):
        T.err().print(
            f"warning: listening on {host}: anyone who can reach this machine can use the explorer and see "
            "the model and its data (there is no authentication); the default --host 127.0.0.1 is local only",
            style="yellow", markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
    try:
        hosts = (*LOCAL_HOSTS, host) if is_loopback(host) else None  # local: refuse DNS rebinding
        from lesion.serve.text import explorer_for_file

        state = explorer_for_file(
            model, text=text, tokens=tokens, sequences=sequences, layers=T.names(layers), say=T.note
        ) or explorer_for(model, dataset, examples, T.names(layers), say=T.note)
        app = create_app(state, hosts=hosts)
        url = url_of(sock)
        T.out().print(f"lesion explorer: {url}  (API: {url}/docs; Ctrl+C stops it)", soft_wrap=True)
        server(app).run(sockets=[sock])
    finally:
        sock.close()
