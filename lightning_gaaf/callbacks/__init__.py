"""Monitors that show why GAAF or dropout changes training (paper Tables 1-3, Figures 3 and 5).

Each works on any LightningModule with plain or GAAF activations, on one or many devices:
statistics are computed on the device, summed across ranks with one ``all_reduce`` and logged by
rank 0 under ``gaaf/...``; at the end of fit they are saved under ``<run_dir>/stats/`` (what
``gaaf-report`` draws from) and drawn into ``<run_dir>/report/*.png``.
"""

from lightning_gaaf.callbacks.correlation import NodeCorrelation
from lightning_gaaf.callbacks.gradient import GradientInformation
from lightning_gaaf.callbacks.history import MetricsHistory
from lightning_gaaf.callbacks.saturation import SaturationMonitor
from lightning_gaaf.callbacks.thresholds import SATURATION_RATIO, saturation_intervals
from lightning_gaaf.callbacks.variance import NetVariance
from lightning_gaaf.callbacks.weights import WeightHistograms

__all__ = [
    "SATURATION_RATIO",
    "GradientInformation",
    "MetricsHistory",
    "NetVariance",
    "NodeCorrelation",
    "SaturationMonitor",
    "WeightHistograms",
    "saturation_intervals",
]
