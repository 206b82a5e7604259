"""The choices and shared options of the ``lesion`` command line (``lesion.cli`` holds the commands)."""

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


class Arch(StrEnum):
    mlp = "mlp"
    convnet = "convnet"
    resnet = "resnet"
    gpt = "gpt"
    vit = "vit"


class CorruptMode(StrEnum):
    shuffle = "shuffle"
    random = "random"


class Optimizer(StrEnum):
    adam = "adam"
    sgd = "sgd"


class Schedule(StrEnum):
    constant = "constant"
    cosine = "cosine"
    step = "step"


class Backend(StrEnum):
    local = "local"
    ray = "ray"


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"


ModelArg = Annotated[
    Path,
    typer.Argument(
        help="Model file (.safetensors) written by `lesion train`, or a Hugging Face model directory."
    ),
]
AllowPickleOpt = Annotated[
    bool,
    typer.Option(
        "--allow-pickle", help="Read a directory's pytorch_model.bin with torch.load(weights_only=True)."
    ),
]
TrustRemoteCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Run the Python code a Hugging Face directory ships (auto_map, an unknown model_type). "
        "Only for directories you trust: that code runs with your permissions.",
    ),
]
TextOpt = Annotated[
    Path | None, typer.Option(help="Language model: a text file, tokenised with the model's tokenizer.")
]
TokensOpt = Annotated[
    Path | None, typer.Option(help="Language model: token ids (.npy/.npz/.safetensors/text of ids).")
]
SeqLenOpt = Annotated[
    int | None,
    typer.Option(min=2, help="Tokens per sequence of a language model (default min(64, context))."),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace existing output files (regular files only, never devices).")
]
TriageOpt = Annotated[
    str | None,
    typer.Option(
        help="Triage: attribution estimate for every unit, exact effects for a budget of units (a count, a "
        "share like 10%, or a time like 10min) chosen by the estimate plus a random sample; the table marks "
        "each number exact or estimated and the summary gives the recall of the top 1% with its interval."
    ),
]
MaxMemoryOpt = Annotated[
    str | None,
    typer.Option(
        help="Memory budget for the sweep's batches, e.g. 4GB (default: what the machine has free)."
    ),
]
BenchDeviceOpt = Annotated[
    str,
    typer.Option(
        help="Device of the real-size workloads W8-W11 (cpu, cuda, cuda:1); with cuda and no --only they "
        "run alone. Their GPU rows read 'not measured' until a run on a GPU fills them."
    ),
]
BenchPrecisionOpt = Annotated[
    Precision, typer.Option(help="W8-W11: fp32, or bf16 (autocast, for lesion and the hook loop alike).")
]

AddressOpt = Annotated[
    str | None, typer.Option(help="Ray cluster HOST:PORT for --backend ray (default: a local instance).")
]
ShardsOpt = Annotated[
    int | None, typer.Option(min=1, help="--backend ray: unit ranges (default: one per cluster CPU).")
]


def check_ray_flags(backend, address: str | None, shards: int | None) -> None:
    """--address and --shards only with --backend ray (``lesion analyze``, ``lesion atlas``)."""
    from lesion.errors import LesionError

    if getattr(backend, "value", backend) == "local" and (address or shards):
        raise LesionError(
            "--address and --shards shard the lesions over Ray; expected --backend ray with them"
        )
