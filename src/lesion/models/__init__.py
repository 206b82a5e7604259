"""Architectures of the paper and the model file format (safetensors; pickles are refused).

>>> import torch
>>> from lesion.models import build_model
>>> net = build_model({"kind": "mlp", "input_shape": [1, 8, 8], "widths": [32], "n_classes": 10}, seed=0)
>>> tuple(net(torch.zeros(2, 1, 8, 8)).shape)
(2, 10)
"""

from lesion.models._arch import ARCHITECTURES, MAX_INPUT_ELEMENTS, MAX_PARAMETERS, build_model, mlp
from lesion.models._conv import BasicBlock, ResNet, convnet, resnet
from lesion.models._file import EXTRA_PREFIX, load_model, save_model

__all__ = [
    "ARCHITECTURES",
    "EXTRA_PREFIX",
    "MAX_INPUT_ELEMENTS",
    "MAX_PARAMETERS",
    "BasicBlock",
    "ResNet",
    "build_model",
    "convnet",
    "load_model",
    "mlp",
    "resnet",
    "save_model",
]
