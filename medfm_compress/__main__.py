"""``python -m medfm_compress`` runs the command line."""

from .cli import main

main()
