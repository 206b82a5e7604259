"""Datasets held in memory as normalised tensors, deterministic loaders over them, readers of the
official file formats, and a verified downloader.

>>> from lesion.data import load_dataset, make_loader
>>> d = load_dataset("digits", seed=0)
>>> x, y = next(iter(make_loader(d.x_train, d.y_train, batch_size=32, shuffle=True, seed=1)))
>>> tuple(x.shape), y.dtype
((32, 1, 8, 8), torch.int64)
"""

from lesion.data._arrays import from_arrays, from_npz
from lesion.data._builtin import DATASETS, load_dataset, load_image_folder
from lesion.data._dataset import Dataset, make_loader
from lesion.data._download import download, fetch
from lesion.data._folder import read_image_folder
from lesion.data._formats import MAX_DATA_BYTES, read_cifar_binary, read_cifar_python, read_idx
from lesion.data._text import CORPORA, builtin_tokens, read_token_ids, token_sequences, tokenize_file

__all__ = [
    "CORPORA",
    "DATASETS",
    "MAX_DATA_BYTES",
    "Dataset",
    "builtin_tokens",
    "download",
    "fetch",
    "from_arrays",
    "from_npz",
    "load_dataset",
    "load_image_folder",
    "make_loader",
    "read_cifar_binary",
    "read_cifar_python",
    "read_idx",
    "read_image_folder",
    "read_token_ids",
    "token_sequences",
    "tokenize_file",
]
