"""The fast path: many lesions per forward pass, cached prefixes, exact rank-1 shortcuts.

Words: a **prefix** is the part of the network before a lesioned site, run once and reused (the
module-prefix engine, ``prefix.py``; ``Plan.run_until`` on a traced graph); ``batched.py`` holds the
traced graph's engine (many lesions per pass), ``dispatch.py`` decides which engine serves a lesion and
checks it (``prefixserve.py`` for the module-prefix engine, whose passes run ``kernels.py``'s lean
activations); a cumulative curve deletes the ``first_k`` units of a deletion order."""

from lesion.engine.batched import Engine
from lesion.engine.graph import Plan, Unsupported

__all__ = ["Engine", "Plan", "Unsupported"]
