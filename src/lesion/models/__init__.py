"""Architectures of the paper and the model file format (safetensors; pickles are refused).

Small transformers: ``gpt`` (a GPT-style decoder) and ``vit`` (a ViT-style classifier).

>>> import torch
>>> from lesion.models import build_model
>>> net = build_model({"kind": "mlp", "input_shape": [1, 8, 8], "widths": [32], "n_classes": 10}, seed=0)
>>> tuple(net(torch.zeros(2, 1, 8, 8)).shape)
(2, 10)
"""

from lesion.models._arch import ARCHITECTURES, MAX_INPUT_ELEMENTS, MAX_PARAMETERS, build_model, mlp
from lesion.models._conv import BasicBlock, ResNet, convnet, resnet
from lesion.models._file import EXTRA_PREFIX, load_model, save_model
from lesion.models._transformer import GPT, ViT, gpt, vit

__all__ = [
    "ARCHITECTURES",
    "EXTRA_PREFIX",
    "GPT",
    "MAX_INPUT_ELEMENTS",
    "MAX_PARAMETERS",
    "BasicBlock",
    "ResNet",
    "ViT",
    "build_model",
    "convnet",
    "gpt",
    "load_model",
    "mlp",
    "resnet",
    "save_model",
    "vit",
]
