"""Hugging Face model directories on disk: ``config.json`` + safetensors weights (one file or shards
with an index), and a tokenizer where the directory has one. Nothing is downloaded
(``local_files_only=True``) and nothing is unpickled: a directory whose weights are only a
``pytorch_model.bin`` pickle is refused unless ``allow_pickle=True``, which reads it with
``torch.load(weights_only=True)`` (tensors only, no code).

``transformers`` is optional (``pip install 'lesion[hf]'``); it is imported only when a directory is
opened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lesion.errors import LesionError, ModelFileError

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")
# the end of a class name in config.architectures -> (Auto class, task)
HEADS = (
    ("ForCausalLM", "AutoModelForCausalLM", "causal-lm"),
    ("LMHeadModel", "AutoModelForCausalLM", "causal-lm"),
    ("ForSequenceClassification", "AutoModelForSequenceClassification", "sequence-classification"),
    ("ForImageClassification", "AutoModelForImageClassification", "image-classification"),
)


@dataclass
class HFModel:
    """A loaded directory: the model (eval mode, CPU), its config, tokenizer (or None) and task."""

    model: Any
    config: Any
    tokenizer: Any | None
    task: str  # "causal-lm", "sequence-classification" or "image-classification"
    architecture: str
    path: Path
    notes: list[str] = field(default_factory=list)

    @property
    def vocab_size(self) -> int | None:
        v = getattr(self.config, "vocab_size", None)
        return v if isinstance(v, int) else None

    @property
    def context(self) -> int | None:
        """The most positions the model takes (``n_positions`` / ``max_position_embeddings``)."""
        for name in ("n_positions", "max_position_embeddings", "n_ctx"):
            v = getattr(self.config, name, None)
            if isinstance(v, int) and v > 0:
                return v
        return None

    @property
    def tokenizer_name(self) -> str:
        return f"the tokenizer in {self.path}" if self.tokenizer is not None else "no tokenizer (token ids)"


def is_model_dir(path: str | Path) -> bool:
    """True for a directory holding a ``config.json`` (a Hugging Face model directory)."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def transformers_module():
    """``transformers``, or a LesionError saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise LesionError(
            "reading a Hugging Face model directory needs transformers: pip install 'lesion[hf]'"
        ) from None
    return transformers


def load_hf_dir(path: str | Path, *, allow_pickle: bool = False) -> HFModel:
    """Load the Hugging Face model directory ``path`` on the CPU in eval mode.

    The Auto class comes from ``config.architectures`` (``...ForCausalLM`` / ``...LMHeadModel``,
    ``...ForSequenceClassification``, ``...ForImageClassification``). Raises ModelFileError for a
    missing config, missing or corrupt weights, a pickle-only directory (without ``allow_pickle``),
    weights that do not fit the config, or a tokenizer larger than the model's vocabulary.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(f"{str(path)!r} is not a directory; expected a Hugging Face model directory")
    if not (path / "config.json").is_file():
        raise ModelFileError(
            f"{path} has no config.json; expected a Hugging Face model directory (config.json + "
            "model.safetensors), as written by save_pretrained(dir, safe_serialization=True)"
        )
    tf = transformers_module()
    config = _config(tf, path)
    pickled = _weights(path, allow_pickle) is None  # True: a pickle, opted in
    arch, auto, task = _head(tf, config, path)
    model = _from_pickle(tf, auto, config, path) if pickled else _from_safetensors(tf, auto, path)
    model = model.float().eval()
    tokenizer = _tokenizer(tf, path)
    hf = HFModel(model, config, tokenizer, task, arch, path)
    _check_vocab(hf)
    return hf


def _config(tf, path: Path):
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelFileError(f"{path / 'config.json'} is not valid JSON ({e})") from None
    try:
        return tf.AutoConfig.from_pretrained(path, local_files_only=True)
    except (ValueError, KeyError, OSError, TypeError) as e:
        raise ModelFileError(f"{path / 'config.json'}: transformers cannot read this config: {e}") from None


def _head(tf, config, path: Path) -> tuple[str, str, str]:
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        for suffix, auto, task in HEADS:
            if name.endswith(suffix):
                return name, auto, task
    if not names:  # a bare config: a model type with a causal-LM class (gpt2, llama) is read as one
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as causal

        name = causal.get(getattr(config, "model_type", None))
        if isinstance(name, str):
            return name, "AutoModelForCausalLM", "causal-lm"
    kinds = ", ".join(s for s, _, _ in HEADS)
    raise ModelFileError(
        f"{path / 'config.json'} names architectures {names or 'none'}; expected a model with a head "
        f"lesion can score: a class name ending in {kinds}"
    )


def _weights(path: Path, allow_pickle: bool) -> Path | None:
    """The safetensors weights (checked), or None where a pickle is to be read (``allow_pickle``)."""
    if (path / SAFETENSORS_INDEX).is_file():
        files = _shards(path)
    elif (path / SAFETENSORS).exists():
        files = [path / SAFETENSORS]
    else:
        pickled = [p for p in PICKLES if (path / p).exists()]
        if not pickled:
            raise ModelFileError(
                f"{path} holds no weights; expected {SAFETENSORS} (or shards with "
                f"{SAFETENSORS_INDEX}) beside config.json"
            )
        if allow_pickle:
            return None
        raise ModelFileError(
            f"{path / pickled[0]} is a pickle (torch.save); lesion refuses to load pickles because "
            "unpickling can run code. Convert a checkpoint you trust to safetensors: "
            "model = AutoModelForCausalLM.from_pretrained(dir, use_safetensors=False); "
            "model.save_pretrained(new_dir, safe_serialization=True), or pass allow_pickle=True "
            "(--allow-pickle) to read its tensors with torch.load(weights_only=True)"
        )
    from lesion.models._file import _read_header

    for f in files:
        try:
            header = _read_header(f)
        except ModelFileError as e:
            raise ModelFileError(f"{path}: the weights file {f.name} is unreadable: {e}") from None
        if not any(k != "__metadata__" for k in header):
            raise ModelFileError(f"{f}: holds no tensors; expected the model's weights")
    return files[0]


def _shards(path: Path) -> list[Path]:
    index = path / SAFETENSORS_INDEX
    try:
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ModelFileError(
            f"{index}: unreadable index ({e!r}); expected JSON with a 'weight_map'"
        ) from None
    files = []
    for name in names:
        f = (path / str(name)).resolve()
        if f.parent != path.resolve() or not f.is_file():
            raise ModelFileError(f"{index} names the shard {name!r}, which is not a file in {path}")
        files.append(f)
    if not files:
        raise ModelFileError(f"{index} lists no shards")
    return files


def _from_safetensors(tf, auto: str, path: Path):
    try:
        model, report = getattr(tf, auto).from_pretrained(
            path, local_files_only=True, use_safetensors=True, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: the weights do not load into {auto}: {_short(e)}") from None
    missing = sorted(report.get("missing_keys") or ())
    if missing:  # transformers would fill them with random values: a lesion study of noise
        raise ModelFileError(
            f"{path}: the weights lack {len(missing)} tensor(s) the config needs, e.g. {missing[:3]}; "
            "expected every weight of the model in its safetensors file(s)"
        )
    return model


def _from_pickle(tf, auto: str, config, path: Path):
    import torch

    if (path / PICKLES[0]).is_file():
        files = [path / PICKLES[0]]
    else:
        index = json.loads((path / PICKLES[1]).read_text(encoding="utf-8"))["weight_map"]
        files = [path / n for n in sorted(set(index.values()))]
    state = {}
    for f in files:
        try:
            state |= torch.load(f, map_location="cpu", weights_only=True)  # tensors only: no code runs
        except Exception as e:
            raise ModelFileError(f"{f}: torch.load(weights_only=True) refused it: {_short(e)}") from None
    model = getattr(tf, auto).from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise ModelFileError(
            f"{path}: the pickled weights do not fit the config: missing "
            f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.tie_weights()
    return model


def _tokenizer(tf, path: Path):
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        return None
    try:
        return tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: tokenizer files present but unreadable: {_short(e)}") from None


def _check_vocab(hf: HFModel) -> None:
    if hf.tokenizer is None or hf.vocab_size is None:
        return
    n = len(hf.tokenizer)
    if n > hf.vocab_size:
        raise ModelFileError(
            f"{hf.path}: the tokenizer has {n} tokens but the model's vocabulary has {hf.vocab_size} "
            "(config vocab_size); expected a tokenizer no larger than the model's vocabulary (a mismatched "
            "tokenizer)"
        )


def _short(e: BaseException, limit: int = 400) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
