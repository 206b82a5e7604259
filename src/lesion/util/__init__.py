"""Small helpers every package may use: progress bars, JSON of numpy values, output paths written
atomically, allocator tuning, module helpers. Imports nothing of lesion but ``lesion.errors``."""

VERSION = "0.1.0"
