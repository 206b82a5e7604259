"""The commands that run many studies or serve one model: ``lesion reproduce``, ``lesion bench`` and
``lesion serve`` (registered on ``lesion.cli.base``'s Typer app, after the commands on one model file)."""

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from lesion.cli import text as T
from lesion.cli.base import _command
from lesion.cli.options import (
    Backend,
    BenchDeviceOpt,
    BenchPrecisionOpt,
    ForceOpt,
    ModelArg,
    Precision,
    TextOpt,
    TokensOpt,
)
from lesion.errors import LesionError
from lesion.util.outputs import check_file_target


@_command
def reproduce(
    profile: Annotated[
        str,
        typer.Option(
            help="quick (mnist5k, ~10 min on 2 cores), standard (Fashion-MNIST 60k, ~2 h 20 min), paper (the "
            "paper's sizes), or tiny."
        ),
    ] = "quick",
    only: Annotated[
        list[str] | None,
        typer.Option(help="Figures, repeated or comma separated: F1,F7 (default: all, follow-ups too)."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<profile>).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Jobs run at once, in worker processes.")] = 2,
    threads: Annotated[int, typer.Option(min=1, help="torch threads per job.")] = 1,
    dataset: Annotated[str | None, typer.Option(help="Dataset of the MLP studies (e.g. mnist).")] = None,
    conv_dataset: Annotated[
        str | None, typer.Option(help="Dataset of the convnet studies (e.g. cifar10).")
    ] = None,
    root: Annotated[Path | None, typer.Option(help="Folder holding the dataset files.")] = None,
    backend: Annotated[
        Backend,
        typer.Option(help="local (worker processes on this machine) or ray (tasks on a Ray cluster)."),
    ] = Backend.local,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster HOST:PORT for --backend ray (default: a local Ray instance)."),
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Hash every finished job in --out, not only the reused ones.")
    ] = False,
    connect_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for the Ray cluster at --address.")
    ] = 30.0,
    device: Annotated[str, typer.Option(help="Train and measure on cpu, cuda, cuda:1, ...")] = "cpu",
) -> None:
    """Reproduce the paper figure by figure: train, measure, draw, check each claim, write report.html.

    Re-running with the same --out resumes: finished work is read back, never redone, on any backend.
    """
    from dataclasses import replace

    from lesion.experiments.profiles import get_profile
    from lesion.report.reproduce import reproduce as run_reproduce

    start = time.perf_counter()
    chosen = get_profile(profile)
    given = {"dataset": dataset, "conv_dataset": conv_dataset, "root": None if root is None else str(root),
             "device": device}  # fmt: skip
    chosen = replace(chosen, **{k: v for k, v in given.items() if v is not None})
    manifest = run_reproduce(chosen, only=T.names(only, "--only"), out=out, workers=workers, threads=threads,
                             progress=True, backend=backend.value, address=address, verify=verify,
                             connect_timeout=connect_timeout)  # fmt: skip
    folder = out if out is not None else Path("runs") / manifest["profile"]["name"]
    claims = json.loads((folder / "claims.json").read_text())
    T.out().print(T.claims_table(claims))
    jobs = manifest["jobs"]
    T.out().print(
        f"{sum(c['holds'] for c in claims)} of {len(claims)} claims hold; {jobs['computed']} jobs computed, "
        f"{jobs['reused']} reused; {time.perf_counter() - start:.0f} s. Report: {folder / 'report.html'}",
        soft_wrap=True,
    )


@_command
def bench(
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
    quick: Annotated[bool, typer.Option(help="Shrink every workload (well under a minute).")] = False,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per method; the median is reported.")] = 3,
    threads: Annotated[int, typer.Option(min=1, help="torch threads for every method.")] = 2,
    only: Annotated[
        list[str] | None, typer.Option(help="Workloads, repeated or comma separated: W1,W3.")
    ] = None,
    force: ForceOpt = False,
    figure: Annotated[
        Path | None, typer.Option(help="S1: draw the log-log scaling plot as this PNG.")
    ] = None,
    device: BenchDeviceOpt = "cpu",
    precision: BenchPrecisionOpt = Precision.fp32,
) -> None:
    """Time lesion against Captum and a hook loop on the same workloads, after checking they agree."""
    from lesion import bench as lesion_bench

    for target in (out, figure):
        if target is not None:
            check_file_target(target, force=force)  # before the timings, not after

    names = T.names(only, "--only")
    if figure is not None and names is not None and "S1" not in {n.strip().upper() for n in names}:
        raise LesionError("--figure draws the S1 scaling scan; expected S1 among the workloads (--only S1)")
    results = lesion_bench.run(quick=quick, repeats=repeats, threads=threads, only=names, progress=True,
                               device=device, precision=precision.value)  # fmt: skip
    if out is not None:
        lesion_bench.save(results, out)
    if figure is not None:
        if "S1" not in results["workloads"]:
            raise LesionError(
                "--figure draws the S1 scaling scan; expected S1 among the workloads (--only S1)"
            )
        lesion_bench.plot_scaling(results["workloads"]["S1"], figure)
    T.out().print(lesion_bench.table(results))
    if out is not None:
        T.out().print(f"results written to {out}")


@_command
def serve(
    model: ModelArg,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset whose held-out split to use (default: the model's).")
    ] = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free one).")] = 8000,
    host: Annotated[
        str, typer.Option(help="Interface to listen on; not 127.0.0.1 exposes the model to the network.")
    ] = "127.0.0.1",
    examples: Annotated[
        int | None, typer.Option(min=1, help="Use a seeded sample of this many held-out examples.")
    ] = None,
    layers: Annotated[
        list[str] | None,
        typer.Option(help="Layers to show, repeated or comma separated (default: every activation)."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch threads (default torch's; 1 is steadier on a busy CPU).")
    ] = None,
    text: TextOpt = None,
    tokens: TokensOpt = None,
    sequences: Annotated[int, typer.Option(min=1, help="Language model: sequences shown and scored.")] = 16,
) -> None:
    """Explore a model in the browser: delete units with a click, watch accuracy and confusion change;
    on a language model delete heads and MLP neurons and watch each token's next-token loss."""
    from lesion.cli.commands import run_explorer

    run_explorer(model, dataset=dataset, port=port, host=host, examples=examples, layers=layers,
                 threads=threads, text=text, tokens=tokens, sequences=sequences)  # fmt: skip
