"""Training lesion's GPT-style decoder as a ``train`` job (``lesion.training.lm.train_decoder``, the path
``lesion train --arch gpt`` takes too): kept apart from the job kinds so that ``lesion.experiments.jobs``
can call it without an import circle. ``lesion train --arch gpt`` writes its model file through
``lesion.pipeline.lm.train_gpt``; both train with ``train_decoder``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def decoder_job(params: Mapping[str, Any], out: Path) -> None:
    """A ``train`` job for ``arch["kind"] == "gpt"``: next-token training on a built-in corpus
    (``params["dataset"]``, e.g. ``markov``; ``params["sequences"]`` of ``params["seq_len"]`` tokens, 3/4
    train, 1/4 test, as ``lesion train --arch gpt``), saved with the metadata ``lesion serve`` reads."""
    from lesion.models import save_model
    from lesion.training.lm import train_decoder

    seqs, vocab = corpus(params)
    opts = params.get("train", {})
    net, arch, history = train_decoder(
        seqs, vocab, params["arch"], seed=int(params.get("seed", 0)), device=opts.get("device", "cpu"),
        epochs=int(opts.get("epochs", 5)), lr=float(opts.get("lr", 3e-3)),
        batch_size=int(opts.get("batch_size", 32)),
    )  # fmt: skip
    meta = {
        "job": dict(params),
        "dataset": params["dataset"],
        "data_seed": int(params.get("data_seed", 0)),
        "n_sequences": int(params["sequences"]),
        "seq_len": int(params["seq_len"]),
    }
    save_model(net.cpu(), out / "model.safetensors", arch=arch, metadata=meta)
    history = history.copy()
    history.attrs = {}
    history.to_parquet(out / "history.parquet", index=False)


def corpus(params: Mapping[str, Any]):
    from lesion.data import builtin_tokens

    return builtin_tokens(
        params["dataset"],
        n=int(params["sequences"]),
        seq_len=int(params["seq_len"]),
        seed=int(params.get("data_seed", 0)),
    )
