"""Small helpers every package may use: progress bars, JSON of numpy values, output paths written
atomically, allocator tuning, module helpers. Imports nothing of lesion but ``lesion.errors``."""

from typing import Literal

VERSION = "0.1.0"

# The option strings of the public API, as types (a type checker and the docs show the choices).
Precision = Literal["fp32", "bf16"]
Backend = Literal["local", "ray"]
Scaling = Literal["sd", "variance"]
Binning = Literal["quantile", "uniform"]
