"""``python -m lesion.cli``: the command line."""

from lesion.cli.app import main

main()
