"""``python -m lightning_gaaf.cli.tune`` is ``gaaf-tune`` (the worker processes start this way)."""

from lightning_gaaf.cli.tune.main import main

main()
