"""Analyze a model: the one pipeline behind ``lesion analyze``, ``lesion demo``, ``lesion serve`` (whose
``lesion.serve.explorer_for`` measures with ``units`` and ``curves``) and the experiment jobs.

- ``units``, ``curves``, ``noise``: the three measurements of a study with the paper's conventions (unit
  table on held-out data; cumulative curves and per-unit noise on the labels the model was trained on;
  ``fractions`` as a count of evenly spaced points). The experiment jobs and the explorer call them too.
- ``analyze``: all three on one model file, written with figures and a summary into a folder,
  completely or not at all.
- ``open_any`` (from ``lesion.pipeline.open``) / ``dataset_for``: a model file or a Hugging Face model
  directory, and the dataset (and training labels) a model file records. Language models (lesion's gpt,
  HF causal LMs) are studied by ``lesion.pipeline.lm`` on token sequences instead.
- ``train_model``: build, train and save a model described by a ``TrainConfig``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lesion.errors import DataError, LesionError
from lesion.pipeline.open import input_shape, open_any
from lesion.pipeline.spine import Stage, _quiet
from lesion.util.outputs import atomic_write, check_dir_target, check_file_target

ARCHS = ("mlp", "convnet", "resnet", "gpt", "vit")
RANKED_ORDERS = ("selectivity_high", "selectivity_low", "importance_high")
ANALYSIS_FILES = (  # what `analyze` writes into its folder
    "units.parquet", "curves.parquet", "noise.parquet", "summary.json", "manifest.json",
    *(f"{n}.{ext}" for n in ("curves", "noise", "selectivity_importance") for ext in ("png", "svg")),
)  # fmt: skip
DATA_SEED = 0  # the train/test split of every dataset; a model's metadata records the one it used


@dataclass(frozen=True)
class TrainConfig:
    """What ``lesion train`` builds and how it trains it."""

    arch: str = "mlp"
    widths: tuple[int, ...] = (512, 512)
    width_mult: float = 1.0
    resnet_width: int = 16
    dataset: str | None = None  # default: mnist5k, for gpt the built-in markov corpus
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
    d_model: int = 64  # gpt / vit: width of the residual stream
    n_layer: int = 2
    n_head: int = 4
    patch: int = 4  # vit: patch side, dividing the image size
    tokens: str | None = None  # gpt: a token-id file to train on instead of the built-in --dataset corpus
    seq_len: int = 32  # gpt: sequence length = context

    def __post_init__(self):
        if self.dataset is None:
            object.__setattr__(self, "dataset", "markov" if self.arch == "gpt" else "mnist5k")


@dataclass(frozen=True)
class AnalysisConfig:
    """What ``lesion analyze`` measures; ``fractions=None`` measures at every unit count."""

    dataset: str | None = None
    repeats: int = 10
    fractions: int | None = 41
    noise_repeats: int = 5
    seed: int = 0
    layers: tuple[str, ...] | None = None
    backend: str = "local"  # "ray": the single-unit sweep sharded by unit ranges over a Ray cluster
    address: str | None = None  # the Ray cluster (default: a local instance)
    shards: int | None = None  # unit ranges (default: one per CPU of the cluster)
    triage: str | None = None  # exact budget of a triaged single-unit sweep (lesion.analyses.triage)
    max_memory: str | None = None  # memory budget of the sweep's batches (lesion.analyses.memory)

    def __post_init__(self) -> None:
        from lesion.backends.ray_sweep import check_backend

        check_backend(self.backend, self.address, self.shards, None)

    def spread(self, out: Path) -> dict:
        """How the single-unit sweep runs: locally, or on Ray with its finished shards kept beside
        ``out`` (``.NAME.ray-shards``) until the analysis is written, so a rerun resumes."""
        if self.backend == "local":
            return {"backend": "local", "address": self.address, "shards": self.shards}
        resume = out.parent / f".{out.name}.ray-shards"
        return {"backend": self.backend, "address": self.address, "shards": self.shards, "resume": resume}


# ----------------------------------------------------------------------------------------- measurements


def units(
    model, test, *, sites=None, units=None, importance: bool = True, batch_size: int = 1000,
    progress: bool = False, reference=None, metric=None, **spread,
):  # fmt: skip
    """The unit table on held-out ``test`` data (``importance=False``: statistics only); ``spread``:
    ``backend``, ``address``, ``shards``, ``resume`` of ``unit_table``."""
    from lesion.analyses.paper import unit_table

    return unit_table(model, test, sites=sites, units=units, importance=importance, batch_size=batch_size,
                      progress=progress, reference=reference, metric=metric, **spread)  # fmt: skip


def curves(
    model, train, *, sites=None, candidates: Sequence[str] | None = None, orders=("random",), repeats=10,
    seed: int = 0, fractions: int | None = None, units=None, batch_size: int = 1000, progress: bool = False,
    reference=None, metric=None,
):  # fmt: skip
    """Cumulative ablation curves on ``train`` (the labels trained on), at ``fractions`` evenly spaced
    points (None: every unit count)."""
    import numpy as np

    from lesion.analyses.paper import ablation_curves

    grid = None if fractions is None else np.linspace(0.0, 1.0, int(fractions))
    return ablation_curves(
        model, train, sites=sites, candidates=candidates, orders=orders, repeats=repeats, seed=seed,
        fractions=grid, units=units, batch_size=batch_size, progress=progress, reference=reference,
        metric=metric,
    )  # fmt: skip


def noise(
    model, train, *, sites=None, candidates: Sequence[str] | None = None, repeats: int = 5, seed: int = 0,
    scales: Sequence[float] | None = None, progress: bool = False, reference=None,
):  # fmt: skip
    """Per-unit noise curves on ``train``, noise SDs from the candidates' activity on ``train``."""
    from lesion.analyses.paper import noise_curves

    kwargs = {"scales": [float(s) for s in scales]} if scales else {}
    return noise_curves(model, train, sites=sites, candidates=candidates, repeats=repeats, seed=seed,
                        progress=progress, reference=reference, **kwargs)  # fmt: skip


# ----------------------------------------------------------------------------------------- training


def train_model(config: TrainConfig, out: Path, *, force: bool = False) -> dict:
    """Build, train and save a model (history also as CSV beside it); returns the file's metadata."""
    if config.arch not in ARCHS:
        raise LesionError(f"unknown arch {config.arch!r}; known archs: {', '.join(ARCHS)}")
    for target in (out, out.with_name(f"{out.stem}.history.csv")):  # before any work
        check_file_target(target, force=force)
    if config.checkpoints:
        check_dir_target(out.parent / f"{out.stem}.checkpoints", (), force=force)
    if config.arch == "gpt":
        from lesion.pipeline.lm import train_gpt

        return train_gpt(config, out, data_seed=DATA_SEED)
    from lesion.data import load_dataset
    from lesion.models import build_model, save_model
    from lesion.training.corruption import corrupt_labels
    from lesion.training.loop import train

    data = load_dataset(config.dataset, root=config.root, seed=DATA_SEED)
    arch = {"kind": config.arch, "input_shape": list(data.input_shape), "n_classes": data.n_classes}
    arch |= {"dropout": float(config.dropout)}
    arch |= {} if config.arch == "vit" else {"batchnorm": config.batchnorm}
    arch |= {
        "mlp": {"widths": list(config.widths)},
        "convnet": {"width_mult": float(config.width_mult)},
        "resnet": {"width": int(config.resnet_width)},
        "vit": {"patch": config.patch, "d_model": config.d_model, "n_layer": config.n_layer,
                "n_head": config.n_head},
    }[config.arch]  # fmt: skip
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
    atomic(out.with_name(f"{out.stem}.history.csv"), lambda p: history.to_csv(p, index=False))
    return meta


# ----------------------------------------------------------------------------------------- analysis


def analyze(
    model: Path, out: Path, config: AnalysisConfig, *, force: bool = False, stage: Stage = _quiet,
    text=None,
) -> dict:  # fmt: skip
    """Run the study on one model and write its tables, figures and summary into ``out``, completely
    or not at all (``manifest.json``, written last, lists every file with its SHA-256). A language
    model (lesion's gpt, a Hugging Face causal LM directory) gets the next-token study of
    ``lesion.pipeline.lm.analyze_lm`` on the token sequences ``text`` (a ``TextConfig``) names."""
    from lesion.pipeline.lm import LM_FILES, TextConfig, analyze_lm, is_language_model

    text = text or TextConfig()
    check_dir_target(out, (*ANALYSIS_FILES, *LM_FILES), force=force)  # before any work
    clock = Clock()
    net, info = open_any(model, allow_pickle=text.allow_pickle, trust_remote_code=text.trust_remote_code)
    if is_language_model(info):
        return analyze_lm(model, out, config, text, force=force, stage=stage, opened=(net, info), clock=clock)
    if (info.get("arch") or {}).get("task") == "sequence-classification":
        raise LesionError(
            f"{model} is a text classifier; `lesion analyze` studies language models (next-token loss) "
            "and image classifiers. For a text classifier use the Python API: lesion.unit_table(model, "
            "{'input_ids': ..., 'labels': ...})"
        )
    if text.text or text.tokens:
        raise LesionError(f"--text / --tokens are for language models; {model} is a classifier (--dataset)")
    data = dataset_for(info, config.dataset, model)
    sites, cand = _sites(net, data, config.layers)
    clock.lap("load")
    spread = config.spread(out)
    from lesion.pipeline.spine import measure

    table, curve, noisy = measure(net, classifier_study(data, sites, cand), config, clock, stage, spread)
    stage(4, f"writing tables and figures to {out}")
    summary = _summary(model, data, sites, cand, table, curve, config)

    from lesion.pipeline.folder import publish

    title = f"{model.name} on {data.name}"
    return publish(out, summary, clock, spread, lambda d: _write_outputs(d, table, curve, noisy, title=title))


def classifier_study(data, sites, cand):
    """The classifier's ``Study`` (``lesion.pipeline.spine``): unit table on the test split; curves, in
    the paper's orders, and per-unit noise on the train split (the labels trained on)."""
    from lesion.core.metric import Classification
    from lesion.pipeline.spine import Study

    names = [s.name for s in cand]
    return Study(
        test=(data.x_test, data.y_test), train=(data.x_train, data.y_train), sites=sites, candidates=names,
        metric=Classification(), orders=RANKED_ORDERS, noise=True,
        noise_sites=[s.name for s in cand if not s.heads] or names,  # noise needs one channel per unit
    )  # fmt: skip


def dataset_for(info: dict, dataset: str | None, path: Path | None = None):
    """The dataset to analyse on, with the training labels the model file records, if any; its inputs
    must have the shape the model file records."""
    from lesion.data import load_dataset

    meta = info.get("metadata") or {}
    name = dataset or meta.get("dataset")
    if not name:
        raise DataError("the model file records no dataset; pass --dataset (e.g. --dataset mnist5k)")
    root = meta.get("root") if name == meta.get("dataset") else None
    data = load_dataset(name, root=root, seed=int(meta.get("data_seed", DATA_SEED)))
    labels = (info.get("extra") or {}).get("train_labels")  # e.g. corrupted labels it was trained on
    if path is not None and list(data.input_shape) != input_shape(info, path):
        raise DataError(
            f"dataset {data.name!r} has inputs of shape {tuple(data.input_shape)} but the model expects "
            f"{tuple(input_shape(info, path))}; pass the --dataset the model was trained on"
        )
    return data if labels is None or name != meta.get("dataset") else data.with_train_labels(labels)


def _sites(net, data, layers: tuple[str, ...] | None):
    """(sites, candidate sites): every activation and the paper's candidates, or exactly ``layers``."""
    from lesion.core.sites import default_candidates, find_sites

    sites = find_sites(net, data.x_test[:2], list(layers) if layers else None)
    return sites, (sites if layers else default_candidates(sites))


def _write_outputs(out: Path, units, curves, noise, *, title: str) -> None:
    from lesion.analyses.plots import plot_curves, plot_noise, plot_selectivity_importance

    for name, df in (("units", units), ("curves", curves), ("noise", noise)):
        df.to_parquet(out / f"{name}.parquet", index=False)
    ylabel = "Training accuracy (fraction correct)"
    plot_curves(curves, out / "curves.png", title=f"Cumulative ablation: {title}", ylabel=ylabel)
    plot_noise(noise, out / "noise.png", title=f"Per-unit Gaussian noise: {title}", ylabel=ylabel)
    plot_selectivity_importance(units, out / "selectivity_importance.png")


def _summary(model: Path, data, sites, cand, units, curves, config: AnalysisConfig) -> dict:
    """The headline numbers of one analysis, JSON-ready."""
    from lesion.analyses.paper import curve_auc, selectivity_vs_importance
    from lesion.util import VERSION as __version__

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
        **({"triage": units.attrs["triage"]} if "triage" in units.attrs else {}),
        "all_deleted_train_accuracy": float(gone["accuracy"]),
        "all_deleted_train_loss": float(gone["loss"]),
        "auc": _auc_summary(curve_auc(curves)),
        "selectivity_vs_importance": selectivity_vs_importance(units).to_dict("records"),
        "settings": {**asdict(config), "fractions": config.fractions or "all"},
        "version": __version__,
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


class Clock:
    """Seconds spent per stage."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._t, 3)
        self._t = now


def atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through a temporary file beside it, so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
