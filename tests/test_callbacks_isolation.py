"""Monitors keep their state with their trainer: two trainers in one process, one monitor alone."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import pytest
import torch
from _monitor_helpers import TinyData, TinyModule, mlp, trainer
from pytorch_lightning.loggers import CSVLogger
from torch import nn

from lightning_gaaf.callbacks import GradInfoMonitor, NetVarMonitor, SaturationMonitor
from lightning_gaaf.callbacks._hooks import PROBE_ATTRIBUTE


def step_rows(log_dir: Path) -> list[dict[str, str]]:
    """The CSV logger's rows (one per ``log_metrics`` call) holding per-step monitor numbers (the
    whole-run summary, ``gaaf/<statistic>_mean/...``, comes once at the end and is left out)."""
    with open(log_dir / "metrics.csv", newline="") as f:
        rows = [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]
    return [r for r in rows if any(k.startswith("gaaf/") and "_mean/" not in k for k in r)]


class Gate(nn.Module):
    """Identity that, in the first no-grad forward in train mode (a net-variance probe), says so and
    waits until ``release`` is set: the probe stays open while another trainer trains."""

    def __init__(self, entered: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.entered, self.release = entered, release
        self.done = False

    def forward(self, x):
        if self.training and not torch.is_grad_enabled() and not self.done:
            self.done = True
            self.entered.set()
            if not self.release.wait(timeout=120):
                raise TimeoutError("the other trainer did not finish")
        return x


def test_two_trainers_in_one_process_keep_their_own_records_and_probes(tmp_path):
    entered, release = threading.Event(), threading.Event()
    probed = TinyModule(nn.Sequential(Gate(entered, release), mlp(dropout=0.3)))
    probing = NetVarMonitor(log_every_n_steps=1, repeats=3)
    fit_a = trainer(
        tmp_path / "a", [probing], max_steps=3, logger=CSVLogger(tmp_path / "a", name="csv", version=0)
    )
    failures: list[BaseException] = []

    def run_a() -> None:
        try:
            fit_a.fit(probed, datamodule=TinyData())
        except BaseException as err:  # reported by the main thread
            failures.append(err)
            entered.set()

    worker = threading.Thread(target=run_a)
    worker.start()
    try:
        assert entered.wait(timeout=120)  # trainer A is inside a probe forward now
        saturation, grad = (
            SaturationMonitor(log_every_n_steps=1, bins=4),
            GradInfoMonitor(log_every_n_steps=1),
        )
        fit_b = trainer(
            tmp_path / "b",
            [saturation, grad],
            max_steps=3,
            logger=CSVLogger(tmp_path / "b", name="csv", version=0),
        )
        fit_b.fit(TinyModule(mlp()), datamodule=TinyData())
    finally:
        release.set()
        worker.join(timeout=300)
    assert not failures, failures

    # B's training forwards all counted, although A was probing meanwhile: 8 samples x 8 nodes.
    assert saturation.steps == [0, 1, 2]
    assert saturation.history["backbone.1"]["count"] == [64, 64, 64]
    assert probing.steps == [0, 1, 2] and all(v > 0 for v in probing.history["backbone.1.4"])
    assert PROBE_ATTRIBUTE not in vars(probed)

    # Each logger: one row per step holding exactly its own trainer's monitors.
    rows_a = step_rows(tmp_path / "a" / "csv" / "version_0")
    rows_b = step_rows(tmp_path / "b" / "csv" / "version_0")
    assert [int(r["step"]) for r in rows_a] == [0, 1, 2]
    assert [int(r["step"]) for r in rows_b] == [0, 1, 2]
    assert all({k.split("/")[1] for k in r if k.startswith("gaaf/")} == {"net_var"} for r in rows_a)
    for row in rows_b:
        kinds = {k.split("/")[1] for k in row if k.startswith("gaaf/")}
        assert kinds == {"grad_info", "saturation", "net_mean", "net_std"}


@pytest.mark.parametrize("order", ["saturation_first", "net_var_first"])
def test_saturation_skips_the_probe_forwards_in_either_order(tmp_path, order):
    saturation = SaturationMonitor(log_every_n_steps=1, bins=4)
    probing = NetVarMonitor(log_every_n_steps=1, repeats=4)
    callbacks = [saturation, probing] if order == "saturation_first" else [probing, saturation]
    model = TinyModule(mlp(dropout=0.3))
    trainer(tmp_path, callbacks, max_steps=2).fit(model, datamodule=TinyData())
    assert saturation.history["backbone.1"]["count"] == [64, 64]  # the training forward only
    assert all(v > 0 for v in probing.history["backbone.4"])  # behind the first dropout
    assert PROBE_ATTRIBUTE not in vars(model)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SaturationMonitor(log_every_n_steps=1, bins=4),
        lambda: NetVarMonitor(log_every_n_steps=1, repeats=3),
    ],
    ids=["saturation", "net_var"],
)
def test_one_monitor_alone_logs_one_record_per_step(tmp_path, make):
    monitor = make()
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer(tmp_path, [monitor], max_steps=3, logger=logger).fit(
        TinyModule(mlp(dropout=0.3)), datamodule=TinyData()
    )
    rows = step_rows(tmp_path / "csv" / "version_0")
    assert [int(r["step"]) for r in rows] == monitor.steps == [0, 1, 2]
    key = f"gaaf/{monitor.statistic}/backbone.4"
    values = monitor.history["backbone.4"]
    values = values["saturation"] if isinstance(values, dict) else values
    assert [float(r[key]) for r in rows] == pytest.approx(values, rel=1e-6)


def test_no_module_level_mutable_state_in_the_callbacks_package():
    import importlib
    import pkgutil
    import weakref

    import lightning_gaaf.callbacks as package

    mutable = (dict, list, set, bytearray, weakref.WeakKeyDictionary, weakref.WeakValueDictionary)
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, value in vars(module).items():
            if not name.startswith("__") and isinstance(value, mutable):
                found.append(f"{info.name}.{name}")
    assert found == []
