"""The ``lesion`` command line: parse flags, call the library, print with rich.

torch, pandas and matplotlib are imported inside the commands, never at module level, so that
``lesion --help`` answers before torch would have loaded. User errors (``LesionError``) end a command
with ``error: <message>`` on stderr and exit code 2, without a traceback.
"""

import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from lesion.errors import DataError, LesionError, ModelFileError

app = typer.Typer(
    name="lesion",
    help="Lesion studies of PyTorch networks: delete neurons and feature maps, measure the effect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

ARCHS = ("mlp", "convnet", "resnet")
RANKED_ORDERS = ("selectivity_high", "selectivity_low", "importance_high")
EXIT_USER_ERROR = 2
DATA_SEED = 0  # the train/test split of every dataset; a model's metadata records the one it used


def main() -> None:
    """Entry point of the ``lesion`` script."""
    from lesion._alloc import tune_allocator

    tune_allocator()
    app()


def _command(fn: Callable) -> Callable:
    """Register ``fn`` as a command whose LesionErrors become ``error: ...`` and exit code 2."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LesionError as exc:
            _err().print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USER_ERROR) from None

    return app.command()(run)


def _out():
    from rich.console import Console

    return Console()


def _err():
    from rich.console import Console

    return Console(stderr=True)


# ----------------------------------------------------------------------------------------- commands

ModelArg = Annotated[Path, typer.Argument(help="Model file (.safetensors) written by `lesion train`.")]


@_command
def layers(
    model: ModelArg,
    all_: Annotated[
        bool, typer.Option("--all", help="List every module with a tensor output, not only activations.")
    ] = False,
) -> None:
    """List the sites of a model (layers with units): name, module type, unit axis, width, shape."""
    net, info = _load_model(model)
    shape = _input_shape(info, model)
    import torch
    from rich.table import Table

    from lesion.sites import find_sites

    sites = find_sites(net, torch.zeros(1, *shape), "all" if all_ else None)

    table = Table(title=f"{model.name}: {len(sites)} sites, input {tuple(shape)}")
    for col, justify in (("name", "left"), ("module", "left"), ("unit axis", "right")):
        table.add_column(col, justify=justify)
    table.add_column("width", justify="right")
    table.add_column("per-example shape", justify="right")
    for s in sites:
        table.add_row(s.name, s.module_type, str(s.unit_dim), str(s.width), str(s.shape))
    _out().print(table)


@_command
def train(
    arch: Annotated[str, typer.Option(help=f"Architecture; one of: {', '.join(ARCHS)}.")] = "mlp",
    widths: Annotated[str, typer.Option(help="MLP hidden layer widths, comma separated.")] = "512,512",
    width_mult: Annotated[float, typer.Option(help="Convnet channel multiplier (64..512 x w).")] = 1.0,
    resnet_width: Annotated[int, typer.Option(min=1, help="ResNet channels of the first stage.")] = 16,
    dataset: Annotated[
        str, typer.Option(help="Dataset name (digits, mnist5k, fashion-mnist, ...).")
    ] = "mnist5k",
    root: Annotated[
        Path | None, typer.Option(help="Directory holding the dataset files (mnist, cifar10, ...).")
    ] = None,
    corrupt: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction of training labels to corrupt.")
    ] = 0.0,
    corrupt_mode: Annotated[str, typer.Option(help="shuffle (among themselves) or random.")] = "shuffle",
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
    optimizer: Annotated[str, typer.Option(help="adam, or sgd (momentum 0.9).")] = "adam",
    schedule: Annotated[
        str, typer.Option(help="Learning-rate schedule: constant, cosine or step.")
    ] = "constant",
    batch_size: Annotated[int, typer.Option(min=1, help="Mini-batch size.")] = 128,
    dropout: Annotated[float, typer.Option(help="Dropout after each hidden layer, in [0, 1).")] = 0.0,
    batchnorm: Annotated[bool, typer.Option(help="Batch norm before each ReLU.")] = False,
    select_reg: Annotated[
        float, typer.Option(help="Selectivity regulariser alpha: loss - alpha * mean selectivity.")
    ] = 0.0,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    out: Annotated[Path, typer.Option(help="Where to write the model file.")] = Path("model.safetensors"),
) -> None:
    """Train a network and save it, with its training history and labels, as one safetensors file."""
    config = TrainConfig(
        arch=arch, widths=_widths(widths), width_mult=width_mult, resnet_width=resnet_width,
        dataset=dataset, root=str(root) if root else None, corrupt=corrupt, corrupt_mode=corrupt_mode,
        epochs=epochs, until_train_acc=until_train_acc, max_epochs=max_epochs,
        checkpoints=_checkpoints(checkpoints), seed=seed, lr=lr, optimizer=optimizer, schedule=schedule,
        batch_size=batch_size, dropout=dropout, batchnorm=batchnorm, select_reg=select_reg, device=device,
    )  # fmt: skip
    meta = _train_model(config, out)
    _out().print(
        f"saved [bold]{out}[/] after {len(meta['history'])} epochs: train accuracy "
        f"{meta['train_accuracy']:.4f}, test accuracy {meta['test_accuracy']:.4f}"
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
        str | None, typer.Option(help="Comma separated layers to study (default: every activation).")
    ] = None,
) -> None:
    """Selectivity and importance of every unit, ablation and noise curves, figures, summary."""
    config = AnalysisConfig(
        dataset=dataset, repeats=repeats, fractions=_fractions(fractions), noise_repeats=noise_repeats,
        seed=seed, layers=_names(layers),
    )  # fmt: skip
    _print_summary(_analyze(model, out, config), out)


@_command
def demo(
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 5,
) -> None:
    """Train a 2x512 MLP on mnist5k (seed 0), then analyze it: the whole study in a few minutes."""
    start = time.perf_counter()
    model = out / "model.safetensors"
    meta = _train_model(TrainConfig(epochs=epochs), model)
    _err().print(f"trained {model}: test accuracy {meta['test_accuracy']:.4f}")
    _print_summary(_analyze(model, out, AnalysisConfig(dataset="mnist5k")), out)
    _out().print(f"demo finished in {time.perf_counter() - start:.1f} s")


@_command
def reproduce(
    profile: Annotated[
        str,
        typer.Option(
            help="quick (mnist5k, ~10 min on 2 cores), standard (Fashion-MNIST 60k, ~1-2 h), paper (the "
            "paper's sizes), or tiny."
        ),
    ] = "quick",
    only: Annotated[
        str | None, typer.Option(help="Comma separated figures, e.g. F1,F7 (default: all, follow-ups too).")
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
        str, typer.Option(help="local (worker processes on this machine) or ray (tasks on a Ray cluster).")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster HOST:PORT for --backend ray (default: a local Ray instance)."),
    ] = None,
    device: Annotated[str, typer.Option(help="Train and measure on cpu, cuda, cuda:1, ...")] = "cpu",
) -> None:
    """Reproduce the paper figure by figure: train, measure, draw, check each claim, write report.html.

    Re-running with the same --out resumes: finished work is read back, never redone, on any backend.
    """
    from dataclasses import replace

    from lesion.experiments.profiles import get_profile
    from lesion.reproduce import reproduce as run_reproduce

    start = time.perf_counter()
    chosen = get_profile(profile)
    given = {"dataset": dataset, "conv_dataset": conv_dataset, "root": None if root is None else str(root),
             "device": device}  # fmt: skip
    chosen = replace(chosen, **{k: v for k, v in given.items() if v is not None})
    manifest = run_reproduce(chosen, only=only, out=out, workers=workers, threads=threads, progress=True,
                             backend=backend, address=address)  # fmt: skip
    folder = out if out is not None else Path("runs") / manifest["profile"]["name"]
    claims = json.loads((folder / "claims.json").read_text())
    _out().print(_claims_table(claims))
    jobs = manifest["jobs"]
    _out().print(
        f"{sum(c['holds'] for c in claims)} of {len(claims)} claims hold; {jobs['computed']} jobs computed, "
        f"{jobs['reused']} reused; {time.perf_counter() - start:.0f} s. Report: {folder / 'report.html'}",
        soft_wrap=True,
    )


def _claims_table(claims: list[dict]):
    from rich.table import Table

    colour = {"holds": "green", "does not hold": "red", "inconclusive": "yellow"}
    table = Table("id", "verdict", "statistic [95% interval]", "measured", show_lines=False)
    for c in claims:
        ci = "n/a" if c["ci_low"] is None else f"{c['estimate']:.3g} [{c['ci_low']:.3g}, {c['ci_high']:.3g}]"
        table.add_row(c["id"], f"[{colour[c['verdict']]}]{c['verdict']}[/]", ci, c["measured"])
    return table


@_command
def bench(
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
    quick: Annotated[bool, typer.Option(help="Shrink every workload (well under a minute).")] = False,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per method; the median is reported.")] = 3,
    threads: Annotated[int, typer.Option(min=1, help="torch threads for every method.")] = 2,
    only: Annotated[str | None, typer.Option(help="Comma separated workloads, e.g. W1,W3.")] = None,
) -> None:
    """Time lesion against Captum and a hook loop on the same workloads, after checking they agree."""
    from lesion import bench as lesion_bench

    names = None if only is None else only.split(",")
    results = lesion_bench.run(quick=quick, repeats=repeats, threads=threads, only=names, progress=True)
    if out is not None:
        lesion_bench.save(results, out)
    _out().print(lesion_bench.table(results))
    if out is not None:
        _out().print(f"results written to {out}")


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
        str | None, typer.Option(help="Comma separated layers to show (default: every activation).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch threads (default torch's; 1 is steadier on a busy CPU).")
    ] = None,
) -> None:
    """Explore a model in the browser: delete units with a click, watch accuracy and confusion change."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise LesionError("lesion serve needs fastapi and uvicorn: pip install 'lesion[serve]'") from None
    from lesion.serve import LOCAL_HOSTS, bind, create_app, is_loopback, server, url_of

    sock = bind(host, port)  # before the measurements: a taken port fails at once
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if not is_loopback(host):
        _err().print(
            f"warning: listening on {host}: anyone who can reach this machine can use the explorer and see "
            "the model and its data (there is no authentication); the default --host 127.0.0.1 is local only",
            style="yellow", markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
    try:
        hosts = (*LOCAL_HOSTS, host) if is_loopback(host) else None  # local: refuse DNS rebinding
        app = create_app(_serve_explorer(model, dataset, examples, _names(layers)), hosts=hosts)
        url = url_of(sock)
        _out().print(f"lesion explorer: {url}  (API: {url}/docs; Ctrl+C stops it)", soft_wrap=True)
        server(app).run(sockets=[sock])
    finally:
        sock.close()


def _serve_explorer(model: Path, dataset: str | None, examples: int | None, layers: tuple[str, ...] | None):
    """The explorer's state: the model, its held-out data (or a seeded sample of it), measured once."""
    import torch

    from lesion.serve import Explorer
    from lesion.sites import find_sites

    net, info = _load_model(model)
    data = _dataset_for(info, dataset)
    if list(data.input_shape) != _input_shape(info, model):
        raise DataError(
            f"dataset {data.name!r} has inputs of shape {tuple(data.input_shape)} but the model expects "
            f"{tuple(_input_shape(info, model))}; pass the --dataset the model was trained on"
        )
    x, y = data.x_test, data.y_test
    if examples is not None and examples < len(y):
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(DATA_SEED))[:examples]
        x, y = x[keep.sort().values], y[keep.sort().values]
    sites = find_sites(net, x[:2], list(layers) if layers else None)
    _err().print(
        f"measuring {sum(s.width for s in sites)} units of {model.name} on {len(y)} held-out examples of "
        f"{data.name}" + (" (--examples 2000 would be quicker)" if len(y) > 2000 else ""), highlight=False,
    )  # fmt: skip
    return Explorer(
        net, (x, y), classes=data.classes, sites=sites, name=model.name, dataset=data.name, progress=True
    )


@dataclass(frozen=True)
class TrainConfig:
    """What ``lesion train`` builds and how it trains it."""

    arch: str = "mlp"
    widths: tuple[int, ...] = (512, 512)
    width_mult: float = 1.0
    resnet_width: int = 16
    dataset: str = "mnist5k"
    root: str | None = None
    corrupt: float = 0.0
    corrupt_mode: str = "shuffle"
    epochs: int | None = None
    until_train_acc: float | None = None
    max_epochs: int = 1000
    checkpoints: tuple[float, ...] | None = None
    seed: int = 0
    lr: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "constant"
    batch_size: int = 128
    dropout: float = 0.0
    batchnorm: bool = False
    select_reg: float = 0.0
    device: str = "cpu"


@dataclass(frozen=True)
class AnalysisConfig:
    """What ``lesion analyze`` measures; ``fractions=None`` measures at every unit count."""

    dataset: str | None = None
    repeats: int = 10
    fractions: int | None = 41
    noise_repeats: int = 5
    seed: int = 0
    layers: tuple[str, ...] | None = None


# ----------------------------------------------------------------------------------------- flag parsing


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise LesionError(f"--widths {text!r}; expected positive integers separated by commas, e.g. 512,512")
    return widths


def _fractions(text: str) -> int | None:
    """Number of evenly spaced fractions, or None for every unit count."""
    if text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 2:
        raise LesionError(f"--fractions {text!r}; expected a whole number of points (at least 2) or 'all'")
    return n


def _names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise LesionError(f"--layers {text!r}; expected layer names separated by commas")
    return names


# ----------------------------------------------------------------------------------------- training


def _train_model(config: TrainConfig, out: Path) -> dict:
    """Build, train and save a model (history also as CSV beside it); returns the file's metadata."""
    if config.arch not in ARCHS:
        raise LesionError(f"unknown arch {config.arch!r}; known archs: {', '.join(ARCHS)}")
    from lesion.corruption import corrupt_labels
    from lesion.data import load_dataset
    from lesion.models import build_model, save_model
    from lesion.training import train

    data = load_dataset(config.dataset, root=config.root, seed=DATA_SEED)
    arch = {"kind": config.arch, "input_shape": list(data.input_shape), "n_classes": data.n_classes}
    arch |= {"dropout": float(config.dropout), "batchnorm": config.batchnorm}
    arch |= {
        "mlp": {"widths": list(config.widths)},
        "convnet": {"width_mult": float(config.width_mult)},
        "resnet": {"width": int(config.resnet_width)},
    }[config.arch]
    net = build_model(arch, seed=config.seed)
    labels = corrupt_labels(
        data.y_train, config.corrupt, mode=config.corrupt_mode, n_classes=data.n_classes, seed=config.seed
    )
    hparams = {k: getattr(config, k) for k in ("lr", "batch_size", "optimizer", "schedule", "seed")}
    stop = {"epochs": config.epochs} if config.until_train_acc is None else {
        "until_train_acc": config.until_train_acc, "max_epochs": config.max_epochs,
        **({"epochs": config.epochs} if config.epochs else {}),
    }  # fmt: skip
    ckpt = {}
    if config.checkpoints:
        ckpt = {"checkpoints": config.checkpoints, "directory": out.parent / f"{out.stem}.checkpoints"}
    history = train(
        net, data, progress=True, train_labels=labels, select_reg=config.select_reg, device=config.device,
        arch=arch, **stop, **ckpt, **hparams,
    )  # fmt: skip
    final = history.iloc[-1]  # measured in eval mode after the last epoch
    meta = {"dataset": config.dataset, "data_seed": DATA_SEED, **asdict(config)}
    meta |= {"history": json.loads(history.to_json(orient="records"))}
    meta |= {k: float(final[k]) for k in ("train_accuracy", "train_loss", "test_accuracy", "test_loss")}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(net.cpu(), out, arch=arch, metadata=meta, extra={"train_labels": labels})
    _atomic(out.with_name(f"{out.stem}.history.csv"), lambda p: history.to_csv(p, index=False))
    return meta


def _checkpoints(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise LesionError(f"--checkpoints {text!r}: expected epochs like 1,2,4,8") from None
    if any(v < 0 for v in values):
        raise LesionError(f"--checkpoints {text!r}: epochs must be 0 or more")
    return values


# ----------------------------------------------------------------------------------------- analysis


def _analyze(model: Path, out: Path, config: AnalysisConfig) -> dict:
    """Run the study on one model and write its tables, figures and summary into ``out``."""
    clock = _Clock()
    net, info = _load_model(model)
    data = _dataset_for(info, config.dataset)
    if list(data.input_shape) != _input_shape(info, model):
        raise DataError(
            f"dataset {data.name!r} has inputs of shape {tuple(data.input_shape)} but the model expects "
            f"{tuple(_input_shape(info, model))}; pass the --dataset the model was trained on"
        )
    sites, cand = _sites(net, data, config.layers)
    clock.lap("load")
    units, curves, noise = _measure(net, data, sites, cand, config, clock)
    _stage(4, f"writing tables and figures to {out}")
    _write_outputs(out, units, curves, noise, title=f"{model.name} on {data.name}")
    clock.lap("outputs")
    summary = _summary(model, data, sites, cand, units, curves, config)
    summary["seconds"] = clock.laps
    _atomic(out / "summary.json", lambda p: p.write_text(json.dumps(_jsonable(summary), indent=2) + "\n"))
    return summary


def _measure(net, data, sites, cand, config: AnalysisConfig, clock: "_Clock"):
    """Unit table on the test split; ablation and noise curves on the train split (labels trained on)."""
    import numpy as np

    from lesion.analyses import ablation_curves, noise_curves, unit_table
    from lesion.stats import collect_stats

    train, test = (data.x_train, data.y_train), (data.x_test, data.y_test)
    names = [s.name for s in cand]
    _stage(1, f"single-unit ablations: {sum(s.width for s in sites)} units, {len(test[1])} test examples")
    units = unit_table(net, test, sites=sites, progress=True)
    clock.lap("unit_table")
    n = config.repeats
    _stage(2, f"cumulative ablation: {n} random + {len(RANKED_ORDERS)} ranked orders, train split")
    grid = None if config.fractions is None else np.linspace(0.0, 1.0, config.fractions)
    curves = ablation_curves(
        net, train, sites=sites, candidates=names, orders=("random", *RANKED_ORDERS), repeats=n,
        seed=config.seed, fractions=grid, units=units, progress=True,
    )  # fmt: skip
    clock.lap("ablation_curves")
    _stage(3, f"per-unit noise: {config.noise_repeats} draws per scale, train split")
    ref = collect_stats(net, train, cand, histograms=False)
    noise = noise_curves(
        net, train, reference=ref, sites=sites, candidates=names, repeats=config.noise_repeats,
        seed=config.seed, progress=True,
    )  # fmt: skip
    clock.lap("noise_curves")
    return units, curves, noise


def _dataset_for(info: dict, dataset: str | None):
    """The dataset to analyse on, with the training labels the model file records, if any."""
    from lesion.data import load_dataset

    meta = info.get("metadata") or {}
    name = dataset or meta.get("dataset")
    if not name:
        raise DataError("the model file records no dataset; pass --dataset (e.g. --dataset mnist5k)")
    root = meta.get("root") if name == meta.get("dataset") else None
    data = load_dataset(name, root=root, seed=int(meta.get("data_seed", DATA_SEED)))
    labels = (info.get("extra") or {}).get("train_labels")  # e.g. corrupted labels it was trained on
    return data if labels is None or name != meta.get("dataset") else data.with_train_labels(labels)


def _sites(net, data, layers: tuple[str, ...] | None):
    """(sites, candidate sites): every activation and the paper's candidates, or exactly ``layers``."""
    from lesion.sites import default_candidates, find_sites

    sites = find_sites(net, data.x_test[:2], list(layers) if layers else None)
    return sites, (sites if layers else default_candidates(sites))


def _write_outputs(out: Path, units, curves, noise, *, title: str) -> None:
    from lesion.plots import plot_curves, plot_noise, plot_selectivity_importance

    out.mkdir(parents=True, exist_ok=True)
    for name, df in (("units", units), ("curves", curves), ("noise", noise)):
        _atomic(out / f"{name}.parquet", lambda p, df=df: df.to_parquet(p, index=False))
    ylabel = "Training accuracy (fraction correct)"
    plot_curves(curves, out / "curves.png", title=f"Cumulative ablation: {title}", ylabel=ylabel)
    plot_noise(noise, out / "noise.png", title=f"Per-unit Gaussian noise: {title}", ylabel=ylabel)
    plot_selectivity_importance(units, out / "selectivity_importance.png")


def _summary(model: Path, data, sites, cand, units, curves, config: AnalysisConfig) -> dict:
    """The headline numbers of one analysis, JSON-ready."""
    import lesion
    from lesion.analyses import curve_auc, selectivity_vs_importance

    intact = curves[curves["n_ablated"] == 0].iloc[0]
    gone = curves[curves["n_ablated"] == curves["n_ablated"].max()].iloc[0]
    return {
        "model": str(model),
        "dataset": data.name,
        "n_train": len(data.y_train),
        "n_test": len(data.y_test),
        "sites": [s.name for s in sites],
        "candidates": [s.name for s in cand],
        "n_units": len(units),
        "n_candidate_units": int(gone["n_ablated"]),
        "n_dead": int(units["dead"].sum()),
        "train_accuracy": float(intact["accuracy"]),
        "train_loss": float(intact["loss"]),
        "test_accuracy": float(units.attrs["accuracy"]),
        "test_loss": float(units.attrs["loss"]),
        "all_deleted_train_accuracy": float(gone["accuracy"]),
        "all_deleted_train_loss": float(gone["loss"]),
        "auc": _auc_summary(curve_auc(curves)),
        "selectivity_vs_importance": selectivity_vs_importance(units).to_dict("records"),
        "settings": {**asdict(config), "fractions": config.fractions or "all"},
        "version": lesion.__version__,
    }


def _auc_summary(aucs) -> dict:
    rand = aucs.loc[aucs["order"] == "random", "auc"]
    out: dict[str, Any] = {
        "random_mean": float(rand.mean()),
        "random_sd": float(rand.std(ddof=1)) if len(rand) > 1 else 0.0,
        "random_repeats": len(rand),
    }
    for row in aucs[aucs["order"] != "random"].itertuples():
        out[str(row.order)] = float(row.auc)
    return out


def _print_summary(s: dict, out: Path) -> None:
    from rich.table import Table

    auc = s["auc"]
    pooled = next((r for r in s["selectivity_vs_importance"] if r["layer"] == "all"), {})
    table = Table(title=f"{s['model']} on {s['dataset']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("units (candidates, dead)", f"{s['n_units']} ({s['n_candidate_units']}, {s['n_dead']})"),
        ("accuracy train / test", f"{s['train_accuracy']:.4f} / {s['test_accuracy']:.4f}"),
        ("loss train / test", f"{s['train_loss']:.4f} / {s['test_loss']:.4f}"),
        ("train accuracy, all deleted", f"{s['all_deleted_train_accuracy']:.4f}"),
        ("AUC random (mean ± SD)", f"{auc['random_mean']:.4f} ± {auc['random_sd']:.4f}"),
        *((f"AUC {k.replace('_', ' ')} first", f"{v:.4f}") for k, v in auc.items() if k in RANKED_ORDERS),
        ("selectivity vs Δloss, pooled r", _fmt(pooled.get("pearson_r"))),
    ]
    for row in rows:
        table.add_row(*row)
    console = _out()
    console.print(table)
    seconds = ", ".join(f"{k} {v:.1f}" for k, v in s["seconds"].items())
    console.print(f"seconds: {seconds}", highlight=False)
    console.print(f"wrote tables, figures and summary.json to {out}", highlight=False)


# ----------------------------------------------------------------------------------------- helpers


def _load_model(path: Path):
    if not path.is_file():
        raise ModelFileError(
            f"model file {str(path)!r} does not exist; expected a file written by `lesion train`"
        )
    from lesion.models import load_model

    return load_model(path)


def _input_shape(info: dict, path: Path) -> list[int]:
    shape = (info.get("arch") or {}).get("input_shape")
    if not shape:
        raise ModelFileError(f"model file {str(path)!r} records no input_shape in its arch")
    return [int(d) for d in shape]


def _stage(k: int, text: str) -> None:
    _err().print(f"[bold cyan]\\[{k}/4][/] {text}", highlight=False)


class _Clock:
    """Seconds spent per stage."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._t, 3)
        self._t = now


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through a temporary file beside it, so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _jsonable(value: Any) -> Any:
    """Plain JSON: numpy scalars to Python numbers, NaN and infinities to null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.3f}"


if __name__ == "__main__":
    main()
