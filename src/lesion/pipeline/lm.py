"""The study of a language model (lesion's ``gpt`` or a Hugging Face causal LM directory): every MLP
neuron and every attention head deleted alone (zero replacement) and cumulatively, scored by the
next-token loss on token sequences, written as tables, figures and a summary.

torch is imported inside the functions, so that ``lesion --help`` stays fast.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lesion.errors import DataError, LesionError
from lesion.util.outputs import check_dir_target

LM_FILES = (
    "units.parquet",
    "curves.parquet",
    "summary.json",
    "manifest.json",
    *(f"{n}.{ext}" for n in ("curves", "unit_effects") for ext in ("png", "svg")),
)
LM_ORDERS = ("importance_high", "importance_low")


@dataclass(frozen=True)
class TextConfig:
    """Where a language model's token sequences come from (``lesion analyze --text/--tokens``)."""

    text: str | None = None  # a UTF-8 text file, tokenised with the model directory's tokenizer
    tokens: str | None = None  # a file of token ids
    seq_len: int | None = None  # default min(64, context)
    sequences: int = 64  # at most this many sequences are used
    allow_pickle: bool = False
    trust_remote_code: bool = False  # run a model directory's own code (never by default)


def is_language_model(info: dict) -> bool:
    arch = info.get("arch") or {}
    return arch.get("kind") == "gpt" or (arch.get("kind") == "hf" and arch.get("task") == "causal-lm")


def facts(net, info: dict) -> dict[str, Any]:
    """Context length, vocabulary size and tokenizer (with a name for errors) of a language model."""
    hf = info.get("hf")
    if hf is not None:
        return {
            "context": hf.context,
            "vocab_size": hf.vocab_size,
            "tokenizer": hf.tokenizer,
            "tokenizer_name": hf.tokenizer_name,
        }
    arch = info.get("arch") or {}
    return {
        "context": arch.get("context"),
        "vocab_size": arch.get("vocab_size"),
        "tokenizer": None,
        "tokenizer_name": "token ids (lesion's gpt has no tokenizer)",
    }


def example_input(net, info: dict, path: Path):
    """A one-example input batch for a dry run (``lesion layers``)."""
    import torch

    arch = info.get("arch") or {}
    if is_language_model(info) or arch.get("task") == "sequence-classification":
        context = facts(net, info)["context"] or 8
        return {"input_ids": torch.zeros(1, min(8, context), dtype=torch.long)}
    shape = arch.get("input_shape")
    if not shape:
        raise LesionError(f"model file {str(path)!r} records no input_shape in its arch")
    return torch.zeros(1, *[int(d) for d in shape])


def lm_data(net, info: dict, text: TextConfig, *, split: str = "test") -> tuple[dict, str]:
    """``({"input_ids": (n, seq_len)}, description)`` from ``--text``, ``--tokens`` or what the model
    file records (its built-in corpus, held-out ``split``, or its token file)."""
    from lesion.data import token_sequences

    f = facts(net, info)
    ids, name, source = _token_source(f, info, text, split)
    seq_len = text.seq_len or (int(ids.shape[1]) if ids.ndim == 2 else None)  # a corpus: its own length
    data = token_sequences(ids, seq_len=seq_len, vocab_size=f["vocab_size"], context=f["context"],
                           tokenizer=source, max_sequences=text.sequences)  # fmt: skip
    return data, name


def _token_source(f: dict, info: dict, text: TextConfig, split: str):
    """(token ids, a name for the data, where the ids come from, for errors)."""
    from lesion.data import read_token_ids, tokenize_file

    if text.text and text.tokens:
        raise LesionError("give --text or --tokens, not both")
    if text.text:
        if f["tokenizer"] is None:
            raise DataError(f"--text {text.text} needs a tokenizer, and this model has none; pass --tokens "
                            "FILE of token ids instead")  # fmt: skip
        from lesion.data._text import default_seq_len

        need = (text.seq_len or default_seq_len(f["context"])) * text.sequences  # no more is tokenised
        ids = tokenize_file(text.text, f["tokenizer"], max_tokens=need)
        return ids, Path(text.text).name, f["tokenizer_name"]
    meta, own = info.get("metadata") or {}, (info.get("arch") or {}).get("kind") == "gpt"
    tokens = text.tokens or (meta.get("tokens") if own and not meta.get("dataset") else None)
    if tokens:
        return read_token_ids(tokens), Path(tokens).name, f"the token file {tokens}"
    corpus = meta.get("dataset")
    if not corpus or not own:
        raise DataError("a language model needs data: pass --text FILE (tokenised with the model's "
                        "tokenizer) or --tokens FILE (token ids)")  # fmt: skip
    return _corpus_split(corpus, info, split), f"{corpus} ({split})", f"the built-in corpus {corpus!r}"


def _corpus_split(corpus: str, info: dict, split: str):
    from lesion.data import builtin_tokens

    meta = info.get("metadata") or {}
    seqs, _ = builtin_tokens(
        corpus,
        n=int(meta.get("n_sequences", 512)),
        seq_len=int(meta.get("seq_len", 32)),
        seed=int(meta.get("data_seed", 0)),
    )
    cut = len(seqs) * 3 // 4  # the train / test split of ``lesion train --arch gpt``
    return seqs[:cut] if split == "train" else seqs[cut:]


def analyze_lm(
    model: Path,
    out: Path,
    config,
    text: TextConfig,
    *,
    opened,
    clock,
    force: bool = False,
    stage=lambda k, text: None,
) -> dict:
    """Unit table (every head and MLP neuron deleted alone, zero replacement, next-token loss) and
    cumulative ablation curves in loss on the same sequences (``lesion.pipeline.spine``: one intact
    pass), written into ``out`` completely or not at all."""
    from lesion.core.metric_lm import NextTokenLoss
    from lesion.core.sites import find_sites
    from lesion.pipeline.spine import Study, measure

    check_dir_target(out, LM_FILES, force=force)  # before any work
    if config.dataset:
        raise LesionError(f"--dataset {config.dataset} names an image dataset; a language model is studied "
                          "on --text FILE or --tokens FILE")  # fmt: skip
    net, info = opened  # (model, info) of lesion.pipeline.classifier.open_any
    data, name = lm_data(net, info, text)
    sites = find_sites(
        net, {"input_ids": data["input_ids"][:2]}, list(config.layers) if config.layers else None
    )
    clock.lap("load")
    study = Study(test=data, train=data, sites=sites, candidates=[s.name for s in sites],
                  metric=NextTokenLoss(), orders=LM_ORDERS, examples="sequences")  # fmt: skip
    spread = config.spread(out)
    table, curve, _ = measure(net, study, config, clock, stage, spread)
    table.insert(2, "kind", table["layer"].map({s.name: "head" if s.heads else "neuron" for s in sites}))
    stage(4, f"writing tables and figures to {out}")
    summary = _summary(model, name, data, sites, table, curve, config, text)

    def write_tables(folder: Path) -> None:
        table.to_parquet(folder / "units.parquet", index=False)
        curve.to_parquet(folder / "curves.parquet", index=False)
        plot_loss_curves(curve, folder / "curves.png", title=f"Cumulative ablation: {model.name} on {name}")
        plot_unit_effects(table, folder / "unit_effects.png", title=f"Single-unit deletions: {model.name}")

    from lesion.pipeline.folder import publish

    return publish(out, summary, clock, spread, write_tables)


def _summary(model, name, data, sites, table, curve, config, text: TextConfig) -> dict:
    from lesion.util import VERSION as __version__

    gone = curve[curve["n_ablated"] == curve["n_ablated"].max()].iloc[0]
    top = table.sort_values("delta_loss", ascending=False).head(10)
    return {
        "model": str(model),
        "dataset": name,
        "task": "causal-lm",
        "n_sequences": int(data["input_ids"].shape[0]),
        "seq_len": int(data["input_ids"].shape[1]),
        "sites": [s.name for s in sites],
        "n_units": len(table),
        "n_heads": int((table["kind"] == "head").sum()),
        "n_neurons": int((table["kind"] == "neuron").sum()),
        "loss": float(table.attrs["loss"]),
        **({"triage": table.attrs["triage"]} if "triage" in table.attrs else {}),
        "accuracy": float(table.attrs["accuracy"]),
        "all_deleted_loss": float(gone["loss"]),
        "top_units": [
            {"unit": f"{r.layer}:{r.unit}", "kind": r.kind, "delta_loss": float(r.delta_loss)}
            for r in top.itertuples()
        ],
        "settings": {
            **asdict(config),
            "fractions": config.fractions or "all",
            **{k: v for k, v in asdict(text).items() if k not in ("allow_pickle", "trust_remote_code")},
        },
        "version": __version__,
    }


def plot_loss_curves(curves, path: Path, *, title: str) -> None:
    """Next-token loss against the fraction of units deleted: random orders as mean ± SD, ranked lines."""
    from lesion.analyses.plots import _figure, _save, _units_axis

    fig, ax = _figure()
    rand = curves[curves["order"] == "random"]
    if len(rand):
        g = rand.groupby("fraction")["loss"]
        mean, sd = g.mean(), g.std(ddof=1).fillna(0.0)
        ax.fill_between(mean.index, mean - sd, mean + sd, color="0.6", alpha=0.35, lw=0, label="random ± SD")
        ax.plot(
            mean.index,
            mean.to_numpy(),
            color="black",
            lw=2,
            label=f"random order (mean of {rand['repeat'].nunique()})",
        )
    for k, order in enumerate(o for o in dict.fromkeys(curves["order"]) if o != "random"):
        c = curves[curves["order"] == order].sort_values("fraction")
        ax.plot(c["fraction"], c["loss"], lw=1.8, color=f"C{k}", label=order.replace("_", " ") + " first")
    ax.set(xlim=(0, 1), xlabel="Fraction of heads and MLP neurons deleted", ylabel="Next-token loss (nats)")
    _units_axis(ax, curves)
    ax.set_title(title)
    fig.legend(loc="outside right upper", frameon=False)
    _save(fig, path)


def plot_unit_effects(table, path: Path, *, title: str) -> None:
    """Each unit's change in next-token loss when deleted alone, one column of points per site."""
    import numpy as np

    from lesion.analyses.plots import _figure, _save

    fig, ax = _figure()
    layers = list(dict.fromkeys(table["layer"]))
    for i, layer in enumerate(layers):
        g = table[table["layer"] == layer]
        jitter = np.random.default_rng(i).uniform(-0.3, 0.3, len(g))
        heads = g["kind"].iloc[0] == "head"
        ax.scatter(
            i + jitter,
            g["delta_loss"],
            s=28 if heads else 8,
            marker="D" if heads else "o",
            color="C1" if heads else "C0",
            alpha=0.8 if heads else 0.5,
            lw=0,
        )
    ax.axhline(0.0, color="0.5", lw=0.8, zorder=0)
    ax.set_xticks(
        range(len(layers)),
        [
            f"{n}\n({'heads' if table[table['layer'] == n]['kind'].iloc[0] == 'head' else 'neurons'})"
            for n in layers
        ],
        fontsize=7,
    )
    ax.set(ylabel="Δ next-token loss when deleted alone (nats)", title=title)
    _save(fig, path)


N_SEQUENCES = 1024  # sequences of a built-in corpus that `lesion train --arch gpt` draws


def train_gpt(config, out: Path, *, data_seed: int = 0) -> dict:
    """``lesion train --arch gpt``: a GPT-style decoder trained by next-token loss on a built-in corpus
    (``config.dataset``, e.g. ``markov``) or a token-id file (``config.tokens``), 3/4 train, 1/4 test."""

    from lesion.data import CORPORA, builtin_tokens, read_token_ids, token_sequences
    from lesion.models import save_model
    from lesion.training.lm import train_decoder
    from lesion.util.outputs import atomic_write

    if config.checkpoints or config.corrupt or config.select_reg or config.until_train_acc is not None:
        raise LesionError(
            "--arch gpt trains for --epochs; checkpoints, --corrupt, --select-reg and "
            "--until-train-acc apply to classifiers only"
        )
    if config.tokens:
        ids = read_token_ids(config.tokens)
        vocab = int(ids.max()) + 1 if ids.size else 0
        seqs = token_sequences(ids, seq_len=config.seq_len, vocab_size=None)["input_ids"].numpy()
        name = str(config.tokens)
    elif config.dataset in CORPORA:
        seqs, vocab = builtin_tokens(config.dataset, n=N_SEQUENCES, seq_len=config.seq_len, seed=data_seed)
        name = config.dataset
    else:
        raise DataError(
            f"--arch gpt trains on a token corpus: --dataset {' or '.join(CORPORA)}, or "
            f"--tokens FILE; got --dataset {config.dataset!r}"
        )
    if len(seqs) < 2:
        raise DataError(f"{name}: {len(seqs)} sequence(s) of {config.seq_len} tokens; expected at least 2")
    arch = {"d_model": config.d_model, "n_layer": config.n_layer, "n_head": config.n_head,
            "dropout": float(config.dropout)}  # fmt: skip
    net, arch, history = train_decoder(
        seqs, vocab, arch, seed=config.seed, epochs=config.epochs or 5, lr=config.lr,
        batch_size=config.batch_size, optimizer=config.optimizer, progress=True,
    )  # fmt: skip
    final = history.iloc[-1]
    meta = {
        **asdict(config),
        "dataset": name if not config.tokens else None,
        "data_seed": data_seed,
        "n_sequences": N_SEQUENCES,
        "seq_len": int(seqs.shape[1]),
    }
    meta |= {"history": json.loads(history.iloc[1:].to_json(orient="records"))}  # epochs 1..
    meta |= {k: float(final[k]) for k in ("train_accuracy", "train_loss", "test_accuracy", "test_loss")}
    meta |= {f"initial_{k}": float(history.iloc[0][k]) for k in ("train_loss", "test_loss")}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(net, out, arch=arch, metadata=meta)
    atomic_write(out.with_name(f"{out.stem}.history.csv"), lambda p: history.to_csv(p, index=False))
    return meta
