"""The commands on one model file: ``lesion layers``, ``train``, ``analyze``, ``atlas`` and ``demo``:
parse flags, call the library, print with rich.

torch, pandas and matplotlib are imported inside the commands, never at module level, so that
``lesion --help`` answers before torch would have loaded. User errors (``LesionError``) end a command
with ``error: <message>`` on stderr and exit code 2, without a traceback.
"""

import time
from pathlib import Path
from typing import Annotated

import typer

from lesion.cli import text as T
from lesion.cli.base import _command
from lesion.cli.options import (
    AddressOpt,
    AllowPickleOpt,
    Arch,
    Backend,
    CorruptMode,
    ForceOpt,
    MaxMemoryOpt,
    ModelArg,
    Optimizer,
    Schedule,
    SeqLenOpt,
    ShardsOpt,
    TextOpt,
    TokensOpt,
    TriageOpt,
    TrustRemoteCodeOpt,
    check_ray_flags,
)
from lesion.pipeline import classifier as study
from lesion.pipeline.classifier import ANALYSIS_FILES, AnalysisConfig, TrainConfig
from lesion.util.outputs import check_dir_target

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
    address: AddressOpt = None,
    shards: ShardsOpt = None,
    triage: TriageOpt = None,
    max_memory: MaxMemoryOpt = None,
) -> None:
    """Selectivity and importance of every unit, ablation and noise curves, figures, summary; on a
    language model every head and MLP neuron's change in next-token loss, and loss curves."""
    from lesion.pipeline.lm import TextConfig

    check_ray_flags(backend, address, shards)
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
    address: AddressOpt = None,
    shards: ShardsOpt = None,
) -> None:
    """The card of every unit (what it responds to, what breaks without it, who backs it up, its role
    in words) as roles.parquet, cards.json and one self-contained atlas.html; an interrupted run resumes."""
    from lesion.cli.atlas import atlas as make_atlas
    from lesion.cli.atlas import print_summary

    check_ray_flags(backend, address, shards)
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
