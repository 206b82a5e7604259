"""The vocabulary of the whole package: units, sites, batches, lesions, replacements, metrics, the runner
(the slow path that defines every lesion) and streaming statistics.

It imports nothing of lesion outside ``lesion.core`` but ``lesion.errors`` and ``lesion.util``; every
other package builds on it (``tests/test_structure.py`` enforces this).
"""
