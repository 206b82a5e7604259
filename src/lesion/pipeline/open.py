"""Open a model for a study: a file written by ``lesion train`` (safetensors, never pickle) or a local
Hugging Face model directory, as ``(model, info)``; ``lesion.pipeline.classifier`` re-exports both
functions."""

from __future__ import annotations

from pathlib import Path

from lesion.errors import ModelFileError


def open_any(path: Path, *, allow_pickle: bool = False):
    """``(model, info)`` of a lesion model file or a local Hugging Face model directory (``config.json``
    + safetensors; a pickle-only directory is refused unless ``allow_pickle``, which reads it with
    ``torch.load(weights_only=True)``). For a directory ``info`` is ``{"arch": {"kind": "hf",
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
        hf = load_hf_dir(path, allow_pickle=allow_pickle)
        arch = {"kind": "hf", "architecture": hf.architecture, "task": hf.task}
        if hf.task == "image-classification":
            size = getattr(hf.config, "image_size", None) or 224  # ResNet configs name no size: ImageNet's
            size = list(size) if isinstance(size, list | tuple) else [size, size]
            arch["input_shape"] = [int(getattr(hf.config, "num_channels", 3)), *map(int, size)]
        return hf.model, {"arch": arch, "metadata": {}, "hf": hf}
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
