"""``python -m lesion.cli``: the command line."""

from lesion.cli import main

main()
