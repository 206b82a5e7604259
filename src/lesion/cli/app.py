"""The ``lesion`` command line: parse flags, call the library, print with rich.

torch, pandas and matplotlib are imported inside the commands, never at module level, so that
``lesion --help`` answers before torch would have loaded. User errors (``LesionError``) end a command
with ``error: <message>`` on stderr and exit code 2, without a traceback.
"""

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from lesion.cli import text as T
from lesion.cli.options import (
    AllowPickleOpt,
    Arch,
    Backend,
    BenchDeviceOpt,
    BenchPrecisionOpt,
    CorruptMode,
    ForceOpt,
    MaxMemoryOpt,
    ModelArg,
    Optimizer,
    Precision,
    Schedule,
    SeqLenOpt,
    TextOpt,
    TokensOpt,
    TriageOpt,
    TrustRemoteCodeOpt,
)
from lesion.errors import LesionError
from lesion.pipeline import classifier as study
from lesion.pipeline.classifier import ANALYSIS_FILES, AnalysisConfig, TrainConfig
from lesion.util.outputs import check_dir_target, check_file_target

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
    from lesion.util.alloc import tune_allocator

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


# ----------------------------------------------------------------------------------------- commands


@_command
def layers(
    model: ModelArg,
    all_: Annotated[
        bool, typer.Option("--all", help="List every module with a tensor output, not only activations.")
    ] = False,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """List the sites of a model (layers with units): name, module type, unit axis, width, shape;
    attention heads (width = heads) with their head dimension."""
    from lesion.cli.commands import list_sites

    list_sites(model, all_=all_, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)


@_command
def train(
    arch: Annotated[Arch, typer.Option(help="Architecture.")] = Arch.mlp,
    widths: Annotated[str, typer.Option(help="MLP hidden layer widths, comma separated.")] = "512,512",
    width_mult: Annotated[float, typer.Option(help="Convnet channel multiplier (64..512 x w).")] = 1.0,
    resnet_width: Annotated[int, typer.Option(min=1, help="ResNet channels of the first stage.")] = 16,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Dataset name (digits, mnist5k, fashion-mnist, ...; gpt: markov or repeat). "
            "Default mnist5k, for gpt markov."
        ),
    ] = None,
    root: Annotated[
        Path | None, typer.Option(help="Directory holding the dataset files (mnist, cifar10, ...).")
    ] = None,
    corrupt: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction of training labels to corrupt.")
    ] = 0.0,
    corrupt_mode: Annotated[
        CorruptMode, typer.Option(help="shuffle (among themselves) or random.")
    ] = CorruptMode.shuffle,
    epochs: Annotated[int | None, typer.Option(min=1, help="Training epochs (default 5).")] = None,
    until_train_acc: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Train until this training accuracy instead.")
    ] = None,
    max_epochs: Annotated[int, typer.Option(min=1, help="Cap for --until-train-acc.")] = 1000,
    checkpoints: Annotated[
        str | None, typer.Option(help="Epochs to save checkpoints at, e.g. 1,2,4,8 (0 = untrained).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the weights, the batch order, corruption.")] = 0,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    optimizer: Annotated[Optimizer, typer.Option(help="adam, or sgd (momentum 0.9).")] = Optimizer.adam,
    schedule: Annotated[Schedule, typer.Option(help="Learning-rate schedule.")] = Schedule.constant,
    batch_size: Annotated[int, typer.Option(min=1, help="Mini-batch size.")] = 128,
    dropout: Annotated[float, typer.Option(help="Dropout after each hidden layer, in [0, 1).")] = 0.0,
    batchnorm: Annotated[bool, typer.Option(help="Batch norm before each ReLU.")] = False,
    select_reg: Annotated[
        float, typer.Option(help="Selectivity regulariser alpha: loss - alpha * mean selectivity.")
    ] = 0.0,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    d_model: Annotated[int, typer.Option(min=1, help="gpt/vit: width of the residual stream.")] = 64,
    n_layer: Annotated[int, typer.Option(min=1, help="gpt/vit: transformer blocks.")] = 2,
    n_head: Annotated[int, typer.Option(min=1, help="gpt/vit: attention heads per block.")] = 4,
    patch: Annotated[int, typer.Option(min=1, help="vit: patch side (divides the image size).")] = 4,
    tokens: Annotated[
        Path | None, typer.Option(help="gpt: train on this token-id file (.npy/.npz/.safetensors/text).")
    ] = None,
    seq_len: Annotated[int, typer.Option(min=2, help="gpt: sequence length = the model's context.")] = 32,
    out: Annotated[Path, typer.Option(help="Where to write the model file.")] = Path("model.safetensors"),
    force: ForceOpt = False,
) -> None:
    """Train a network and save it, with its training history and labels, as one safetensors file."""
    config = TrainConfig(
        arch=arch.value, widths=T.widths(widths), width_mult=width_mult, resnet_width=resnet_width,
        dataset=dataset, root=str(root) if root else None,
        corrupt=corrupt, corrupt_mode=corrupt_mode.value,
        epochs=epochs, until_train_acc=until_train_acc, max_epochs=max_epochs,
        checkpoints=T.checkpoints(checkpoints), seed=seed, lr=lr, optimizer=optimizer.value,
        schedule=schedule.value,
        batch_size=batch_size, dropout=dropout, batchnorm=batchnorm, select_reg=select_reg, device=device,
        d_model=d_model, n_layer=n_layer, n_head=n_head, patch=patch, tokens=str(tokens) if tokens else None,
        seq_len=seq_len,
    )  # fmt: skip
    meta = study.train_model(config, out, force=force)
    T.out().print(
        f"saved [bold]{out}[/] after {len(meta['history'])} epochs: train accuracy "
        f"{meta['train_accuracy']:.4f}, test accuracy {meta['test_accuracy']:.4f}"
        + (f", test next-token loss {meta['test_loss']:.4f}" if arch == Arch.gpt else "")
    )


@_command
def analyze(
    model: ModelArg,
    out: Annotated[Path, typer.Option(help="Directory for the tables, summary and figures.")],
    dataset: Annotated[
        str | None, typer.Option(help="Dataset (default: the one recorded in the model file).")
    ] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Random ablation orders.")] = 10,
    fractions: Annotated[
        str, typer.Option(help="How many evenly spaced fractions to ablate (>= 2), or 'all' unit counts.")
    ] = "41",
    noise_repeats: Annotated[int, typer.Option(min=1, help="Noise draws per scale.")] = 5,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the random orders and the noise.")] = 0,
    layers: Annotated[
        list[str] | None,
        typer.Option(help="Layers to study, repeated or comma separated (default: every activation)."),
    ] = None,
    text: TextOpt = None,
    tokens: TokensOpt = None,
    seq_len: SeqLenOpt = None,
    sequences: Annotated[int, typer.Option(min=1, help="Language model: at most this many sequences.")] = 64,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    force: ForceOpt = False,
    backend: Annotated[
        Backend, typer.Option(help="local, or ray: the single-unit sweep sharded by unit ranges over Ray.")
    ] = Backend.local,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster HOST:PORT for --backend ray (default: a local instance).")
    ] = None,
    shards: Annotated[
        int | None, typer.Option(min=1, help="--backend ray: unit ranges (default: one per cluster CPU).")
    ] = None,
    triage: TriageOpt = None,
    max_memory: MaxMemoryOpt = None,
) -> None:
    """Selectivity and importance of every unit, ablation and noise curves, figures, summary; on a
    language model every head and MLP neuron's change in next-token loss, and loss curves."""
    from lesion.pipeline.lm import TextConfig

    if backend == "local" and (address or shards):
        raise LesionError("--address and --shards shard the sweep over Ray; expected --backend ray with them")
    config = AnalysisConfig(
        dataset=dataset, repeats=repeats, fractions=T.fractions(fractions), noise_repeats=noise_repeats,
        seed=seed, layers=T.names(layers), backend=backend.value, address=address, shards=shards,
        triage=triage, max_memory=max_memory,
    )  # fmt: skip
    lm = TextConfig(text=str(text) if text else None, tokens=str(tokens) if tokens else None, seq_len=seq_len,
                    sequences=sequences, allow_pickle=allow_pickle,
                    trust_remote_code=trust_remote_code)  # fmt: skip
    summary = study.analyze(model, out, config, force=force, stage=T.stage, text=lm)
    (T.print_lm_summary if summary.get("task") == "causal-lm" else T.print_summary)(summary, out)


@_command
def atlas(
    model: ModelArg,
    out: Annotated[Path, typer.Option(help="Directory for roles.parquet, cards.json and atlas.html.")],
    dataset: Annotated[str | None, typer.Option(help="Dataset (default: the model file's).")] = None,
    examples: Annotated[int | None, typer.Option(min=1, help="A seeded sample of held-out examples.")] = None,
    layers: Annotated[list[str] | None, typer.Option(help="Layers (default: every activation).")] = None,
    pairs: Annotated[
        int | None, typer.Option(min=0, help="Units (largest effects) given pair lesions (16; 8 by triage).")
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Top and bottom examples per unit.")] = 8,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the sample and the random sets.")] = 0,
    text: TextOpt = None,
    tokens: TokensOpt = None,
    seq_len: SeqLenOpt = None,
    sequences: Annotated[int, typer.Option(min=1, help="Language model: at most this many sequences.")] = 64,
    allow_pickle: AllowPickleOpt = False,
    force: ForceOpt = False,
    triage: Annotated[
        str,
        typer.Option(
            help="auto (every unit exactly up to 4096 units, above that triage with an exact budget of 0.5% "
            "of the units), off, or an exact budget (a count, a share like 1%, a time like 20min): the "
            "attribution estimate for every unit, exact effects for the top units and a random sample; "
            "each card says exact or estimated, the atlas records the recall of the top units."
        ),
    ] = "auto",
    backend: Annotated[
        Backend, typer.Option(help="local, or ray: the exact single-unit lesions sharded over Ray.")
    ] = Backend.local,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster HOST:PORT for --backend ray (default: a local instance).")
    ] = None,
    shards: Annotated[
        int | None, typer.Option(min=1, help="--backend ray: unit ranges (default: one per cluster CPU).")
    ] = None,
) -> None:
    """The card of every unit (what it responds to, what breaks without it, who backs it up, its role
    in words) as roles.parquet, cards.json and one self-contained atlas.html; an interrupted run resumes."""
    from lesion.cli.atlas import atlas as make_atlas
    from lesion.cli.atlas import print_summary

    if backend == "local" and (address or shards):
        raise LesionError(
            "--address and --shards shard the lesions over Ray; expected --backend ray with them"
        )
    summary = make_atlas(
        model, out, dataset=dataset, examples=examples, layers=T.names(layers), pair_units=pairs, top=top,
        seed=seed, force=force, text=text, tokens=tokens, allow_pickle=allow_pickle, seq_len=seq_len,
        sequences=sequences, triage=triage, spread={"backend": backend.value, "address": address,
                                                    "shards": shards},
    )  # fmt: skip
    print_summary(summary, out)


@_command
def demo(
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 5,
    force: ForceOpt = False,
) -> None:
    """Train a 2x512 MLP on mnist5k (seed 0), then analyze it: the whole study in a few minutes."""
    start = time.perf_counter()
    model = out / "model.safetensors"
    check_dir_target(out, ANALYSIS_FILES, force=force)  # before training: the analysis must fit too
    meta = study.train_model(TrainConfig(epochs=epochs), model, force=force)
    T.err().print(f"trained {model}: test accuracy {meta['test_accuracy']:.4f}")
    summary = study.analyze(model, out, AnalysisConfig(dataset="mnist5k"), force=force, stage=T.stage)
    T.print_summary(summary, out)
    T.out().print(f"demo finished in {time.perf_counter() - start:.1f} s")


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


if __name__ == "__main__":
    main()
