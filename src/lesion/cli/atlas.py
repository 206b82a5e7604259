"""``lesion atlas``: the card of every unit of a model, as a table, card data and one HTML page.

Above 4,096 units (``--triage auto``) the effects come by triage (``lesion.roles.scale``); ``--backend
ray`` shards the exact single-unit lesions over a Ray cluster.

Resumable: the lesion stages are kept in ``DIR/.partial`` while the atlas is made and reused by a run
that was interrupted; ``manifest.json`` is written last, so an interrupted atlas never reads as complete.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from lesion.analyses.triage import recall_claim
from lesion.cli import text as T
from lesion.errors import LesionError
from lesion.util.outputs import MANIFEST, OutputError, check_dir_target, read_manifest

PARTIAL = ".partial"


def atlas(
    model: Path, out: Path, *, dataset: str | None, examples: int | None, layers: tuple[str, ...] | None,
    pair_units: int | None, top: int, seed: int, force: bool, text: Path | None, tokens: Path | None,
    allow_pickle: bool, seq_len: int | None = None, sequences: int = 64, triage: str = "auto",
    spread: dict | None = None,
) -> dict:  # fmt: skip
    """Make the atlas of ``model`` into ``out``; returns a short summary."""
    from lesion.roles.atlas import ATLAS_FILES

    _check_out(out, ATLAS_FILES, force)
    start = time.perf_counter()
    from lesion.pipeline.classifier import open_any
    from lesion.pipeline.lm import is_language_model

    net, info = open_any(model, allow_pickle=allow_pickle)
    if is_language_model(info):
        made = _language_model(net, info, model, text, tokens, seq_len, sequences)
    elif text or tokens:
        raise LesionError(f"--text / --tokens are for language models; {model} is a classifier (--dataset)")
    else:
        made = _classifier(net, info, model, dataset, examples, seed)
    data, title, kw, extra = made
    from lesion.roles.assemble import build
    from lesion.roles.atlas import write_atlas

    result = build(net, data, layers=list(layers) if layers else None, top=top, pair_units=pair_units,
                   seed=seed, progress=True, keep=out / PARTIAL, triage=triage, **(spread or {}),
                   **kw)  # fmt: skip
    measured = time.perf_counter()
    write_atlas(out, result, title=title, **extra(result))
    result.meta.setdefault("seconds", {})["write"] = round(time.perf_counter() - measured, 3)
    shutil.rmtree(out / PARTIAL, ignore_errors=True)
    roles = [c.role_rule for c in result.cards]
    return {"units": len(result.cards), "seconds": time.perf_counter() - start,
            "rules": {r: roles.count(r) for r in dict.fromkeys(roles)},
            "stages": result.meta.get("seconds", {}), "triage": result.meta.get("triage"),
            "bytes": (out / "atlas.html").stat().st_size}  # fmt: skip


def _classifier(net, info, model: Path, dataset, examples, seed):
    import torch

    from lesion.pipeline.classifier import dataset_for
    from lesion.roles.atlas import example_ids, thumbnails

    data = dataset_for(info, dataset, model)
    x, y = data.x_test, data.y_test
    if examples is not None and examples < len(y):
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:examples].sort().values
        x, y = x[keep], y[keep]
    train, true = _memorisation_data(info, dataset, model, data)
    T.err().print(f"atlas of {model.name} on {data.name}: {len(y)} held-out examples"
                  + (f", memorisation on {int((train[1] != true).sum())} mislabeled training examples"
                     if train is not None else ""))  # fmt: skip

    def extra(result):
        return {"images": thumbnails((x, y), example_ids(result)), "classes": data.classes}

    return (x, y), f"{model.name} on {data.name}", {"train": train, "true_labels": true}, extra


def _language_model(net, info, model: Path, text, tokens, seq_len, sequences):
    from lesion.pipeline.lm import TextConfig, facts, lm_data
    from lesion.roles.atlas import token_texts

    config = TextConfig(text=str(text) if text else None, tokens=str(tokens) if tokens else None,
                        seq_len=seq_len, sequences=sequences)  # fmt: skip
    data, name = lm_data(net, info, config)
    tok = facts(net, info)["tokenizer"]
    decode = getattr(tok, "convert_ids_to_tokens", None)
    T.err().print(f"atlas of {model.name} on {name}: {len(data['input_ids'])} sequences")

    def extra(result):
        return {"images": {}, "texts": token_texts(data, result, decode=decode)}

    return data, f"{model.name} on {name}", {"batch_size": 64}, extra


def _check_out(out: Path, files, force: bool) -> None:
    """A complete atlas is replaced only with --force; an incomplete one (no manifest) is resumed."""
    complete = True
    try:
        read_manifest(out, verify=False)
    except OutputError:
        complete = False
    if complete and not force:
        raise OutputError(f"--out {str(out)!r} already holds a complete atlas; pass --force to replace it")
    if complete and force:
        shutil.rmtree(out / PARTIAL, ignore_errors=True)
        (out / MANIFEST).unlink(missing_ok=True)
    check_dir_target(out, files, force=True)


def _memorisation_data(info: dict, dataset: str | None, model: Path, data):
    """(training data with the labels trained on, true labels) where the model file records training
    labels that differ from the dataset's; else (None, None)."""
    labels = (info.get("extra") or {}).get("train_labels")
    if labels is None:
        return None, None
    from lesion.pipeline.classifier import dataset_for

    true = dataset_for({**info, "extra": {}}, dataset, model).y_train
    if true.shape != data.y_train.shape or bool((true == data.y_train).all()):
        return None, None
    return (data.x_train, data.y_train), true


def print_summary(summary: dict, out: Path) -> None:
    T.out().print(
        f"atlas of {summary['units']} units written to {out} in {summary['seconds']:.1f} s "
        f"(open {out / 'atlas.html'}, {summary['bytes'] / 1e6:.1f} MB)"
    )
    tri = summary.get("triage")
    if tri:
        T.out().print(
            f"  effects by triage (budget {tri['budget']}): exact for {tri['exact']} units (the top "
            f"{tri['top']} by attribution estimate and a random sample of {tri['sampled']}), estimated for "
            f"the rest; {recall_claim(tri)}",
            soft_wrap=True,
        )
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in summary.get("stages", {}).items())
    T.out().print(f"  stages: {stages}", soft_wrap=True)
    for rule, k in sorted(summary["rules"].items(), key=lambda kv: -kv[1]):
        T.out().print(f"  {k:6d}  {rule}")
