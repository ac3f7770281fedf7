"""Monitors that show why GAAF or dropout changes training (paper Tables 1-3, Figures 3 and 5).

Each is a Lightning callback that works on any LightningModule with plain or GAAF activations, on
one or many devices: statistics are computed on the device, summed across ranks with one
``all_reduce`` and logged to every logger (scalars also to ``trainer.callback_metrics``);
held-out statistics come from Lightning's own test/validation loops. The monitors of one trainer
share one step log (one logger record per step) and no module-level state. Files go to
``<run_dir>/stats/`` (schema: :mod:`lightning_gaaf.stats`) and ``<run_dir>/report/*.png``, with
``run_dir`` the monitor's ``dirpath``, else ``trainer.log_dir``, else ``trainer.default_root_dir``.
The names, arguments, keys and files are tabulated in ``docs/monitors.md``.
"""

from __future__ import annotations

from lightning_gaaf.callbacks._base import Monitor
from lightning_gaaf.callbacks.correlation import NodeCorrelationMonitor
from lightning_gaaf.callbacks.gradient import GradInfoMonitor
from lightning_gaaf.callbacks.guard import GradScaleMonitor
from lightning_gaaf.callbacks.history import MetricsMonitor
from lightning_gaaf.callbacks.saturation import SaturationMonitor
from lightning_gaaf.callbacks.thresholds import SATURATION_RATIO, saturation_intervals
from lightning_gaaf.callbacks.variance import NetVarMonitor
from lightning_gaaf.callbacks.weights import WeightHistMonitor

__all__ = [
    "SATURATION_RATIO",
    "GradInfoMonitor",
    "GradScaleMonitor",
    "MetricsMonitor",
    "Monitor",
    "NetVarMonitor",
    "NodeCorrelationMonitor",
    "SaturationMonitor",
    "WeightHistMonitor",
    "saturation_intervals",
]
