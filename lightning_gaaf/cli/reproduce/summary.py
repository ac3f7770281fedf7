"""What one reproduction run contributes: its numbers and figures, and where the study ran."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["hardware", "load_metrics", "net_figure", "summarize_run", "versions"]


def load_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The run's saved epoch history and test metrics, or None when the run did not finish."""
    path = run_dir / "stats" / "metrics.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:  # cut off mid-write
        return None
    return data if data.get("test", {}).get("test/acc") is not None else None


def summarize_run(run_dir: Path, max_epochs: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """Per-run numbers: test accuracy, convergence epoch, epochs trained, gradient information.

    ``metrics``: the run's epoch records and test metrics (``{"epochs": [...], "test": {...}}``).
    """
    from lightning_gaaf.stats import find_stats_file, read_stats

    epochs = [e for e in metrics["epochs"] if "val/loss" in e]
    best = min(epochs, key=lambda e: e["val/loss"])
    stats = {
        statistic: read_stats(path) if (path := find_stats_file(run_dir / "stats", statistic)) else None
        for statistic in ("grad_info", "node_correlation", "net_var")
    }
    return {
        "test_acc": 100.0 * metrics["test"]["test/acc"],
        "test_loss": metrics["test"].get("test/loss"),
        "epochs_to_converge": best["epoch"],
        "best_val_loss": best["val/loss"],
        "best_val_acc": None if best.get("val/acc") is None else 100.0 * best["val/acc"],
        "epochs_trained": len(metrics["epochs"]),
        "hit_cap": len(metrics["epochs"]) >= max_epochs,
        "grad_info": (stats["grad_info"] or {}).get("summary", {}),
        "node_correlation": (stats["node_correlation"] or {}).get("rows"),
        "net_var": stats["net_var"],
    }


def net_figure(out: Path, run_dirs: dict[str, Path]) -> Path | None:
    """Net distributions per layer on test data, one run per model (the first seed)."""
    from lightning_gaaf.stats import plots

    stats = []
    for model, run_dir in run_dirs.items():
        path = run_dir / "stats" / "saturation.json"
        if path.is_file():
            stats.append((model, json.loads(path.read_text())))
    if not stats or not any(s.get("eval") for _, s in stats):
        return None
    return plots.plot_net_hist(stats, out / "nets_test.png")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("lightning-gaaf", "torch", "pytorch-lightning", "torchvision", "torchmetrics", "wandb"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def hardware() -> dict[str, Any]:
    import torch

    return {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
