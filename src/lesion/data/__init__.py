"""Datasets held in memory as normalised tensors, and deterministic loaders over them.

>>> from lesion.data import load_dataset, make_loader
>>> d = load_dataset("digits", seed=0)
>>> x, y = next(iter(make_loader(d.x_train, d.y_train, batch_size=32, shuffle=True, seed=1)))
>>> tuple(x.shape), y.dtype
((32, 1, 8, 8), torch.int64)
"""

from lesion.data._builtin import DATASETS, load_dataset
from lesion.data._dataset import Dataset, make_loader

__all__ = ["DATASETS", "Dataset", "load_dataset", "make_loader"]
