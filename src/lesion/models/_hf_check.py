"""What a Hugging Face model directory is checked for before anything of it is imported or allocated.

A directory is untrusted input. Its ``config.json`` is read as plain JSON first and refused when it
names code (``auto_map``, a ``model_type`` transformers does not know: ``trust_remote_code`` opts in),
asks for what lesion cannot run on the CPU (quantised weights), holds wrongly typed sizes, or describes
more layers, parameters or activation than this machine's memory allows (``lesion.util.limits``). The
model is then built on the meta device (no memory) and its parameters are checked against the
safetensors headers for presence and shape before a single weight is read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lesion.errors import LesionNote, ModelFileError
from lesion.util.files import open_regular
from lesion.util.limits import MAX_LAYERS, activation_limit, brief, gib, parameter_limit

MAX_JSON_BYTES = 1 << 26  # config.json / tokenizer_config.json / an index: 64 MiB
MAX_LABELS = 1 << 20  # num_labels: transformers builds a dict of that many names
DEFAULT_IMAGE_SIZE = 224  # the size ResNet, ViT, ConvNeXt, ... were trained at
TRUST_OPT = "trust_remote_code=True (--trust-remote-code)"
# config fields that must be positive ints when present
INT_FIELDS = (
    "n_layer", "num_hidden_layers", "num_layers", "n_layers", "n_embd", "hidden_size", "d_model", "n_head",
    "num_attention_heads", "num_key_value_heads", "vocab_size", "n_positions", "max_position_embeddings",
    "n_ctx", "intermediate_size", "n_inner", "num_channels", "patch_size", "embedding_size", "head_dim",
    "num_labels",
)  # fmt: skip
LIST_FIELDS = ("hidden_sizes", "depths")  # lists of positive ints (ResNet stages)


def read_json(path: Path, what: str = "JSON") -> Any:
    """A small JSON file, opened only if it is a regular file, with a short error for anything else."""
    try:
        with open_regular(path, ModelFileError, what) as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise ModelFileError(f"{path} is larger than {MAX_JSON_BYTES:,} bytes; expected a small {what}")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path} is not valid JSON ({e})") from None
    except RecursionError:
        raise ModelFileError(f"{path} is not valid JSON: nested too deeply") from None


def refuse_code(path: Path, config: dict, *, trust_remote_code: bool) -> None:
    """ModelFileError for a directory whose config (or tokenizer config) names code of its own."""
    if trust_remote_code:
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    why = None
    if config.get("auto_map"):
        why = f"its config.json names code in auto_map ({brief(config['auto_map'], 120)})"
    elif config.get("model_type") not in CONFIG_MAPPING_NAMES:
        why = f"its config.json names model_type {brief(config.get('model_type'), 60)}, which transformers "
        why += "does not know (such a directory ships the Python code of its model)"
    else:
        tok = path / "tokenizer_config.json"
        if tok.exists():
            tok_config = read_json(tok, "tokenizer config")
            if isinstance(tok_config, dict) and tok_config.get("auto_map"):
                why = (
                    f"its tokenizer_config.json names code in auto_map ({brief(tok_config['auto_map'], 120)})"
                )
    if why:
        raise ModelFileError(
            f"{path}: {why}; lesion never runs a model directory's code unless asked to. Expected a "
            f"model of a type transformers ships; to run this directory's code knowingly, pass {TRUST_OPT}"
        )


def check_fields(path: Path, config: dict) -> None:
    """Typed sizes, no quantisation, and at most MAX_LAYERS layers, before transformers reads the config."""
    where = path / "config.json"
    if not isinstance(config, dict):
        raise ModelFileError(f"{where} holds a JSON {type(config).__name__}; expected a JSON object")
    for name in INT_FIELDS:  # some models give a list per layer (intermediate_size) or per axis (patch_size)
        v = config.get(name)
        if v is not None and not (_positive(v) or (isinstance(v, list) and 0 < len(v) <= MAX_LAYERS
                                                   and all(_positive(d) for d in v))):  # fmt: skip
            raise ModelFileError(f"{where}: {name} is {brief(v, 60)}; expected a positive int")
    for name in (*LIST_FIELDS, "image_size"):
        v = config.get(name)
        ok = v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0 and name == "image_size")
        ok = ok or (isinstance(v, list) and 0 < len(v) <= MAX_LAYERS and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v))  # fmt: skip
        if not ok:
            raise ModelFileError(
                f"{where}: {name} is {brief(v, 60)}; expected a positive int or a short list of them"
            )
    archs = config.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise ModelFileError(f"{where}: architectures is {brief(archs, 60)}; expected a list of class names")
    if config.get("quantization_config") is not None:
        q = config["quantization_config"]
        method = q.get("quant_method") if isinstance(q, dict) else q
        raise ModelFileError(
            f"{where} describes quantised weights (quantization_config, method {brief(method, 40)}); "
            "expected float weights (lesion runs models on the CPU in float32)"
        )
    layers = _first(config, "n_layer", "num_hidden_layers", "num_layers", "n_layers") or 0
    layers = max(layers, sum(config.get("depths") or []))
    if layers > MAX_LAYERS:
        raise ModelFileError(
            f"{where}: {layers:,} layers; expected at most {MAX_LAYERS:,} (lesion.util.limits)"
        )
    if (config.get("num_labels") or 0) > MAX_LABELS:
        raise ModelFileError(f"{where}: num_labels {config['num_labels']:,}; expected at most {MAX_LABELS:,}")
    id2label = config.get("id2label")
    if id2label is not None and not isinstance(id2label, dict):
        raise ModelFileError(
            f"{where}: id2label is {brief(id2label, 60)}; expected an object of index -> name"
        )


def _positive(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def check_json_depth(path: Path, limit: int = 64) -> None:
    """ModelFileError for a JSON file (a tokenizer.json of many megabytes) nested deeper than ``limit``,
    found without parsing it: brackets outside strings, counted with numpy."""
    import re

    import numpy as np

    try:
        with open_regular(path, ModelFileError, "JSON file") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise ModelFileError(f"{path} is larger than {MAX_JSON_BYTES:,} bytes; expected a smaller JSON file")
    bare = np.frombuffer(re.sub(rb'"(?:[^"\\]|\\.)*"', b'""', raw), dtype=np.uint8)
    steps = np.isin(bare, (ord("["), ord("{"))).astype(np.int64) - np.isin(bare, (ord("]"), ord("}")))
    depth = int(np.cumsum(steps).max()) if len(steps) else 0
    if depth > limit:
        raise ModelFileError(
            f"{path} is JSON nested {depth:,} deep; expected at most {limit} (nested too deeply)"
        )


def _first(config: dict, *names: str) -> int | None:
    return next((config[n] for n in names if isinstance(config.get(n), int)), None)


def attention_note(config) -> str | None:
    """Switch a config that asks for flash attention (CUDA kernels) to torch's attention; say so."""
    asked = getattr(config, "_attn_implementation", None)
    if isinstance(asked, str) and "flash" in asked:
        config._attn_implementation = "sdpa"
        return f"config.json asks for attention {asked!r} (CUDA only); lesion uses torch's sdpa on the CPU"
    return None


def image_input(path: Path, config, notes: list[str]) -> list[int]:
    """(channels, height, width) of an image classifier, from the config; ``DEFAULT_IMAGE_SIZE`` with a
    LesionNote where it records no image_size (ResNet configs do not)."""
    import warnings

    size = getattr(config, "image_size", None)
    if size is None:
        size = DEFAULT_IMAGE_SIZE
        note = f"{path / 'config.json'} records no image_size; lesion assumes {size} x {size} inputs"
        notes.append(note)
        warnings.warn(note, LesionNote, stacklevel=3)
    size = list(size) if isinstance(size, list | tuple) else [size, size]
    channels = getattr(config, "num_channels", 3)
    shape = [channels, *size[:2]]
    if len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ModelFileError(
            f"{path / 'config.json'}: image input {brief(shape, 60)}; expected positive ints"
        )
    from lesion.models._arch import MAX_INPUT_ELEMENTS

    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise ModelFileError(
            f"{path / 'config.json'}: image_size {size[0]} x {size[1]} with {channels} channels is "
            f"{math.prod(shape):,} values per image; expected at most {MAX_INPUT_ELEMENTS:,}"
        )
    return shape


def meta_model(tf, auto: str, config, path: Path):
    """The model built on the meta device (shapes only, no memory), and its parameter count checked."""
    import torch

    try:
        with torch.device("meta"):
            model = getattr(tf, auto).from_config(config)
    except Exception as e:  # an untrusted config can fail in any of transformers' constructors
        raise ModelFileError(f"{path / 'config.json'} does not build a {auto}: {short(e)}") from None
    count = sum(p.numel() for p in model.parameters())
    if count > parameter_limit():
        raise ModelFileError(
            f"{path / 'config.json'} describes {count:,} parameters ({gib(4 * count)} in float32); expected "
            f"at most {parameter_limit():,}, half of this machine's memory (lesion.util.limits)"
        )
    return model


def check_activation(model, shape: list[int], path: Path) -> None:
    """The largest output of any module for one image, by a forward pass on the meta device."""
    import torch

    largest = [0, ""]

    def hook(module, args, output):
        n = output.numel() if isinstance(output, torch.Tensor) else 0
        if n > largest[0]:
            largest[:] = [n, type(module).__name__]

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape, device="meta"))
    except Exception:  # some models cannot run on meta tensors: the input check above still holds
        return
    finally:
        for h in handles:
            h.remove()
    if largest[0] > activation_limit():
        raise ModelFileError(
            f"{path / 'config.json'}: one {'x'.join(map(str, shape))} image makes an activation of "
            f"{largest[0]:,} values ({largest[1]}); expected at most {activation_limit():,} (1/16 of this "
            "machine's memory in float32)"
        )


def check_weights(model, headers: dict[str, list[int]], path: Path) -> None:
    """Every parameter of ``model`` (meta) present with its shape in the safetensors headers (name ->
    shape), before any weight is read. File names are renamed as transformers renames them on load
    (legacy names, the base-model prefix); where it converts tensors (fused experts), the count of
    values is checked instead."""
    params = dict(model.named_parameters())  # duplicates (tied weights) once
    have = _renamed(model, headers)
    if have is None:
        need, held = sum(p.numel() for p in params.values()), sum(math.prod(s) for s in headers.values())
        if held < 0.9 * need:
            raise ModelFileError(f"{path}: the weights hold {held:,} values; the config needs {need:,}")
        return
    missing, wrong = [], []
    for name, p in params.items():
        got = have.get(name)
        if got is None:
            missing.append(name)
        elif got != tuple(p.shape):
            wrong.append(f"{name} {list(got)} (expected {list(p.shape)})")
    if missing:  # transformers would fill them with random values: a lesion study of noise
        raise ModelFileError(
            f"{path}: the weights lack {len(missing):,} tensor(s) the config needs, e.g. {missing[:3]}; "
            "expected every weight of the model in its safetensors file(s)"
        )
    if wrong:
        raise ModelFileError(
            f"{path}: {len(wrong):,} weight(s) do not have the config's shape, e.g. {'; '.join(wrong[:3])}"
        )


def _renamed(model, headers: dict[str, list[int]]) -> dict[str, tuple[int, ...]] | None:
    """The header's names as the model's parameter names, or None where transformers would convert
    (not only rename) tensors, or where its renaming functions are not there (another version)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key

        mapping = get_model_conversion_mapping(model)
        if any(not isinstance(m, WeightRenaming) for m in mapping):
            return None
        meta = model.state_dict()
        prefix = getattr(model, "base_model_prefix", None) or None
        return {rename_source_key(k, mapping, [], prefix, meta)[0]: tuple(s) for k, s in headers.items()}
    except Exception:  # transformers' internals differ: fall back to the count of values
        return None


def short(e: BaseException, limit: int = 400) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
