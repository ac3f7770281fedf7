"""Moved to :mod:`lightning_gaaf.stats.plots`; this module re-exports it for one release."""

from lightning_gaaf.stats.plots import *  # noqa: F403
