"""Run the side-by-side benchmark: the same as ``lesion bench``, callable without the entry point.

    python benchmarks/run.py --out benchmarks/results/$(date +%F).json
    python benchmarks/run.py --quick --only W1,W3

The workloads, the peers and the floor live in ``lesion.bench``; see benchmarks/README.md.
"""

from __future__ import annotations

import sys

from lesion.cli import main

if __name__ == "__main__":
    sys.argv = ["lesion", "bench", *sys.argv[1:]]
    main()
