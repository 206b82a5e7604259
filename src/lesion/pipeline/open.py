"""Open a model for a study: a file written by ``lesion train`` (safetensors, never pickle) or a local
Hugging Face model directory, as ``(model, info)``; ``lesion.pipeline.classifier`` re-exports both
functions."""

from __future__ import annotations

from pathlib import Path

from lesion.errors import ModelFileError


def open_any(path: Path, *, allow_pickle: bool = False, trust_remote_code: bool = False):
    """``(model, info)`` of a lesion model file or a local Hugging Face model directory (``config.json``
    + safetensors; a pickle-only directory is refused unless ``allow_pickle``, which reads it with
    ``torch.load(weights_only=True)``; a directory whose config names code of its own is refused unless
    ``trust_remote_code``). For a directory ``info`` is ``{"arch": {"kind": "hf",
    "architecture", "task", "input_shape" (image classifiers)}, "metadata": {}, "hf": HFModel}``, so the
    CLI, the explorer and the jobs can all take either."""
    path = Path(path)
    if path.is_dir():
        from lesion.models.hf import is_model_dir, load_hf_dir

        if not is_model_dir(path):
            raise ModelFileError(
                f"{str(path)!r} is a directory; expected a model file written by `lesion train` or a Hugging "
                "Face model directory (config.json + model.safetensors); it has no config.json"
            )
        hf = load_hf_dir(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        arch = {"kind": "hf", "architecture": hf.architecture, "task": hf.task}
        if hf.input_shape is not None:
            arch["input_shape"] = list(hf.input_shape)
        return hf.model, {"arch": arch, "metadata": {}, "hf": hf}
    if path.exists() and not path.is_file():
        from lesion.util.files import check_regular

        check_regular(path, ModelFileError, "model file")
    if not path.is_file():
        raise ModelFileError(
            f"model file {str(path)!r} does not exist; expected a file written by `lesion train` or a "
            "Hugging Face model directory"
        )
    from lesion.models import load_model

    return load_model(path)


def input_shape(info: dict, path: Path) -> list[int]:
    shape = (info.get("arch") or {}).get("input_shape")
    if not shape:
        raise ModelFileError(f"model file {str(path)!r} records no input_shape in its arch")
    return [int(d) for d in shape]
