"""Training: one loop for the paper's classifiers, label corruption, the selectivity regulariser, and
next-token training of language models. May import ``core``, ``models`` and ``data``."""
