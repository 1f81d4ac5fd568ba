"""``python -m herbs``: the same as the ``herbs`` command."""
from herbs.cli import main

main()
