"""Analyze a model: open it (lesion's own files or Hugging Face directories), measure it, return
the tables that ``lesion analyze``, the explorer and the experiment jobs share.
May import everything below ``roles`` and ``experiments``."""
