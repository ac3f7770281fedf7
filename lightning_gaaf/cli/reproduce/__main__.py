"""``python -m lightning_gaaf.cli.reproduce`` is ``gaaf-reproduce``."""

from lightning_gaaf.cli.reproduce.main import main

main()
