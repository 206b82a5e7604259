"""Hugging Face model directories on disk: ``config.json`` + safetensors weights (one file or shards
with an index), and a tokenizer where the directory has one. Nothing is downloaded
(``local_files_only=True``) and nothing is unpickled: a directory whose weights are only a
``pytorch_model.bin`` pickle is refused unless ``allow_pickle=True``, which reads it with
``torch.load(weights_only=True)`` (tensors only, no code).

``transformers`` is optional (``pip install 'lesion[hf]'``); it is imported only when a directory is
opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lesion.errors import LesionError, ModelFileError
from lesion.models import _hf_check as C
from lesion.util.files import check_regular
from lesion.util.limits import brief

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
    input_shape: list[int] | None = None  # (channels, height, width) of an image classifier

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
    return Path(path).is_dir() and (Path(path) / "config.json").exists()


def transformers_module():
    """``transformers``, or a LesionError saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise LesionError(
            "reading a Hugging Face model directory needs transformers: pip install 'lesion[hf]'"
        ) from None
    return transformers


def load_hf_dir(path: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> HFModel:
    """Load the Hugging Face model directory ``path`` on the CPU in eval mode.

    The Auto class comes from ``config.architectures`` (``...ForCausalLM`` / ``...LMHeadModel``,
    ``...ForSequenceClassification``, ``...ForImageClassification``). Raises ModelFileError for a
    missing config, missing or corrupt weights, a pickle-only directory (without ``allow_pickle``),
    weights that do not fit the config, or a tokenizer larger than the model's vocabulary. A directory
    whose config names code of its own (``auto_map``, an unknown ``model_type``) is refused before
    anything of it is imported, unless ``trust_remote_code``; sizes are checked from the config and the
    safetensors headers before any weight is allocated (see ``lesion.models._hf_check``).
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(f"{str(path)!r} is not a directory; expected a Hugging Face model directory")
    if not (path / "config.json").exists():
        raise ModelFileError(
            f"{path} has no config.json; expected a Hugging Face model directory (config.json + "
            "model.safetensors), as written by save_pretrained(dir, safe_serialization=True)"
        )
    raw = C.read_json(path / "config.json", "config.json")
    C.check_fields(path, raw)
    tf = transformers_module()
    C.refuse_code(path, raw, trust_remote_code=trust_remote_code)  # before transformers reads the directory
    config = _config(tf, path, trust_remote_code)
    notes = [n for n in [C.attention_note(config)] if n]
    headers = _weights(path, allow_pickle)  # None: a pickle, opted in
    arch, auto, task = _head(tf, config, path)
    meta = C.meta_model(tf, auto, config, path)
    shape = C.image_input(path, config, notes) if task == "image-classification" else None
    if shape is not None:
        C.check_activation(meta, shape, path)
    if headers is not None:
        C.check_weights(meta, headers, path)
    del meta
    if headers is None:
        model = _from_pickle(tf, auto, config, path, trust_remote_code)
    else:
        model = _from_safetensors(tf, auto, config, path, trust_remote_code)
    model = model.float().eval()
    tokenizer = _tokenizer(tf, path, trust_remote_code)
    hf = HFModel(model, config, tokenizer, task, arch, path, notes, shape)
    _check_vocab(hf)
    return hf


def _config(tf, path: Path, trust_remote_code: bool):
    try:
        return tf.AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as e:  # an untrusted config can fail anywhere in transformers' parsing
        raise ModelFileError(
            f"{path / 'config.json'}: transformers cannot read this config: {_short(e)}"
        ) from None


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


def _weights(path: Path, allow_pickle: bool) -> dict[str, list[int]] | None:
    """The safetensors tensors (name -> shape, headers checked), or None where a pickle is to be read
    (``allow_pickle``). Every weights file must be a regular file inside the directory."""
    if (path / SAFETENSORS_INDEX).exists():
        files = _shards(path, SAFETENSORS_INDEX)
    elif (path / SAFETENSORS).exists() or (path / SAFETENSORS).is_symlink():
        files = [_inside(path, SAFETENSORS, path / SAFETENSORS)]
    else:
        pickled = [p for p in PICKLES if (path / p).exists()]
        if not pickled:
            raise ModelFileError(
                f"{path} holds no weights; expected {SAFETENSORS} (or shards with "
                f"{SAFETENSORS_INDEX}) beside config.json"
            )
        if allow_pickle:
            _pickle_files(path)  # checked now: inside the directory, regular files
            return None
        raise ModelFileError(
            f"{path / pickled[0]} is a pickle (torch.save); lesion refuses to load pickles because "
            "unpickling can run code. Convert a checkpoint you trust to safetensors: "
            "model = AutoModelForCausalLM.from_pretrained(dir, use_safetensors=False); "
            "model.save_pretrained(new_dir, safe_serialization=True), or pass allow_pickle=True "
            "(--allow-pickle) to read its tensors with torch.load(weights_only=True)"
        )
    from lesion.models._file import _read_header

    shapes: dict[str, list[int]] = {}
    for f in files:
        try:
            header = _read_header(f)
        except ModelFileError as e:
            raise ModelFileError(f"{path}: the weights file {f.name} is unreadable: {e}") from None
        tensors = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
        if not tensors:
            raise ModelFileError(f"{f}: holds no tensors; expected the model's weights")
        shapes |= tensors
    return shapes


def _inside(path: Path, name: object, where: Path) -> Path:
    """``path / name`` resolved, which must be a regular file directly inside ``path``."""
    f = (path / str(name)).resolve()
    if f.parent != path.resolve():
        raise ModelFileError(
            f"{where} names {brief(name, 80)}, which leads outside {path} (to {brief(str(f), 120)}); "
            "expected weights files inside the model directory"
        )
    try:
        check_regular(f, ModelFileError, "weights file")
    except OSError as e:
        raise ModelFileError(f"{where} names {brief(name, 80)}, which is not a readable file in {path} "
                             f"({e.strerror or e})") from None  # fmt: skip
    return f


def _shards(path: Path, index_name: str) -> list[Path]:
    index = path / index_name
    data = C.read_json(index, "index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelFileError(f"{index}: unreadable index; expected JSON with a 'weight_map' of name -> file")
    try:
        files = [_inside(path, name, index) for name in sorted(set(weight_map.values()))]
    except FileNotFoundError as e:
        raise ModelFileError(
            f"{index} names the shard {Path(e.filename).name!r}, which is not in {path}"
        ) from None
    if not files:
        raise ModelFileError(f"{index} lists no shards")
    return files


def _pickle_files(path: Path) -> list[Path]:
    if (path / PICKLES[0]).exists():
        return [_inside(path, PICKLES[0], path / PICKLES[0])]
    return _shards(path, PICKLES[1])


def _from_safetensors(tf, auto: str, config, path: Path, trust_remote_code: bool):
    try:
        model, report = getattr(tf, auto).from_pretrained(
            path, config=config, local_files_only=True, use_safetensors=True, output_loading_info=True,
            trust_remote_code=trust_remote_code,
        )  # fmt: skip
    except Exception as e:  # the headers were checked; anything left is transformers' own refusal
        raise ModelFileError(f"{path}: the weights do not load into {auto}: {_short(e)}") from None
    missing = sorted(report.get("missing_keys") or ())
    if missing:  # transformers would fill them with random values: a lesion study of noise
        raise ModelFileError(
            f"{path}: the weights lack {len(missing):,} tensor(s) the config needs, e.g. {missing[:3]}; "
            "expected every weight of the model in its safetensors file(s)"
        )
    return model


def _from_pickle(tf, auto: str, config, path: Path, trust_remote_code: bool):
    import torch

    state = {}
    for f in _pickle_files(path):
        try:
            state |= torch.load(f, map_location="cpu", weights_only=True)  # tensors only: no code runs
        except Exception as e:
            raise ModelFileError(f"{f}: torch.load(weights_only=True) refused it: {_short(e)}") from None
    try:
        model = getattr(tf, auto).from_config(config, trust_remote_code=trust_remote_code)
        missing, unexpected = model.load_state_dict(state, strict=False)
    except Exception as e:
        raise ModelFileError(f"{path}: the pickled weights do not load into {auto}: {_short(e)}") from None
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise ModelFileError(
            f"{path}: the pickled weights do not fit the config: missing "
            f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.tie_weights()
    return model


def _tokenizer(tf, path: Path, trust_remote_code: bool):
    present = [path / f for f in TOKENIZER_FILES if (path / f).exists()]
    if not present:
        return None
    for f in present:
        check_regular(f, ModelFileError, "tokenizer file")
    if (path / "tokenizer.json").exists():
        C.read_json(
            path / "tokenizer.json", "tokenizer.json"
        )  # depth and size checked before the Rust parser
    try:
        return tf.AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as e:  # unknown tokenizer classes, corrupt vocabularies: transformers' many errors
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
