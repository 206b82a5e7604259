"""The fast path: many lesions per forward pass, cached prefixes, exact rank-1 shortcuts."""

from lesion.engine.graph import Plan, Unsupported
from lesion.engine.sweeps import Engine

__all__ = ["Engine", "Plan", "Unsupported"]
