"""The monitors inside Lightning: its loops feed them, its checkpoints keep them, its callbacks read them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from _monitor_helpers import TinyData, TinyModule, mlp, monitors, trainer
from pytorch_lightning.callbacks import EarlyStopping
from torch.utils.data import Dataset

import lightning_gaaf
from lightning_gaaf.callbacks import (
    GradInfoMonitor,
    GradScaleMonitor,
    MetricsMonitor,
    NetVarMonitor,
    SaturationMonitor,
    WeightHistMonitor,
)
from lightning_gaaf.stats import FILES, read_stats

PACKAGE = Path(lightning_gaaf.__file__).parent
PRIVATE_API = re.compile(
    r"trainer\._|_update_dataloader|_accelerator_connector|_on_before_batch_transfer|_logger_connector"
)


def test_no_private_lightning_api_in_the_package():
    hits = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_API.search(line)
    ]
    assert hits == []


class CountingSet(Dataset):
    """A dataset that counts how often each sample is read."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.reads = [0] * len(x)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        self.reads[i] += 1
        return self.x[i], self.y[i]


class CountingData(TinyData):
    def setup(self, stage=None):
        if stage in (None, "test") and self.test_set is None:
            self.test_setups += 1
            self.test_set = CountingSet(self.x_test, self.y_test)


def test_one_test_run_feeds_every_monitor_and_reads_each_test_sample_once(tmp_path):
    callbacks = [*monitors(), GradScaleMonitor(), MetricsMonitor()]
    data = CountingData(n_test=40)
    model = TinyModule(mlp())
    fit = trainer(tmp_path, callbacks, max_steps=3)
    fit.fit(model, datamodule=data)
    assert data.test_set is None  # fit reads no test data
    fit.test(model, datamodule=data)
    assert data.test_set.reads == [1] * 40  # one pass over the test data in all
    _, saturation, _, correlation, _, _, metrics = callbacks
    assert saturation.eval_stats["backbone.1"]["count"] == 40 * 8
    assert {r["layer"] for r in correlation.rows} == {"backbone.1", "backbone.3"}
    assert metrics.test["test/loss"] > 0
    for statistic in FILES:
        stats = read_stats(tmp_path / "stats" / FILES[statistic])
        assert stats["statistic"] == statistic and stats["partial"] is False


def test_early_stopping_watches_a_monitor_key(tmp_path):
    # lr=0: the gradient information repeats every epoch, so it never improves.
    grad = GradInfoMonitor(log_every_n_steps=1)
    stop = EarlyStopping(
        monitor="gaaf/grad_info/backbone.0", mode="min", patience=1, check_on_train_epoch_end=True
    )
    fit = trainer(tmp_path, [grad, stop], max_steps=-1, max_epochs=10)
    fit.fit(TinyModule(mlp(), lr=0.0), datamodule=TinyData(n_train=16, batch_size=8))
    assert stop.stopped_epoch == 1 and fit.current_epoch == 2
    assert grad.steps == [0, 1, 2, 3]
    assert stop.best_score.item() == pytest.approx(grad.history["backbone.0"][1])
    assert fit.callback_metrics["gaaf/grad_info/backbone.0"].item() == pytest.approx(
        grad.history["backbone.0"][-1]
    )


def test_scalars_of_every_monitor_reach_callback_metrics(tmp_path):
    callbacks = [*monitors(), GradScaleMonitor(log_every_n_steps=1)]
    model = TinyModule(mlp(dropout=0.3))
    fit = trainer(tmp_path, callbacks, max_steps=2)
    fit.fit(model, datamodule=TinyData())
    grad, saturation, netvar, _, _, scale = callbacks
    got = {k: v.item() for k, v in fit.callback_metrics.items()}
    assert got["gaaf/grad_info/backbone.3"] == pytest.approx(grad.history["backbone.3"][-1])
    assert got["gaaf/saturation/backbone.1"] == pytest.approx(
        saturation.history["backbone.1"]["saturation"][-1]
    )
    assert got["gaaf/net_std/backbone.4"] == pytest.approx(saturation.history["backbone.4"]["std"][-1])
    assert got["gaaf/net_var/backbone.4"] == pytest.approx(netvar.history["backbone.4"][-1])
    assert got["gaaf/grad_scale/backbone.0"] == pytest.approx(scale.history["backbone.0"][-1])
    assert got["gaaf/grad_scale/backbone.6"] == 1.0  # the last layer is the reference


def two_of_each():
    return [
        GradInfoMonitor(log_every_n_steps=1),
        GradInfoMonitor(log_every_n_steps=2),
        SaturationMonitor(log_every_n_steps=1, bins=4),
        SaturationMonitor(log_every_n_steps=2, bins=6),
    ]


class CountingGradInfo(GradInfoMonitor):
    built = 0

    def _state_key_args(self):
        type(self).built += 1
        return super()._state_key_args()


def test_state_key_is_built_once_though_lightning_reads_it_at_every_hook(tmp_path):
    monitor = CountingGradInfo(log_every_n_steps=1)
    trainer(tmp_path, [monitor], max_steps=3).fit(TinyModule(mlp()), datamodule=TinyData())
    assert CountingGradInfo.built == 1
    assert monitor.state_key == "CountingGradInfo{'log_every_n_steps': 1}"


def test_two_instances_of_one_monitor_survive_a_checkpoint_round_trip(tmp_path):
    first = two_of_each()
    assert len({c.state_key for c in first}) == 4
    fit = trainer(tmp_path, first, max_steps=4)
    fit.fit(TinyModule(mlp()), datamodule=TinyData())
    fit.save_checkpoint(tmp_path / "mid.ckpt")
    saved = torch.load(tmp_path / "mid.ckpt", weights_only=False)["callbacks"]
    assert {c.state_key for c in first} <= set(saved)

    second = two_of_each()
    trainer(tmp_path, second, max_steps=6).fit(
        TinyModule(mlp()), datamodule=TinyData(), ckpt_path=tmp_path / "mid.ckpt"
    )
    assert [c.steps for c in first] == [[0, 1, 2, 3], [1, 3], [0, 1, 2, 3], [1, 3]]
    assert [c.steps for c in second] == [[0, 1, 2, 3, 4, 5], [1, 3, 5], [0, 1, 2, 3, 4, 5], [1, 3, 5]]
    assert second[1].history["backbone.0"][:2] == first[1].history["backbone.0"]
    assert [len(h) for h in second[3].history["backbone.1"]["hist"]] == [6, 6, 6]


class Explodes(TinyModule):
    """Raises in the training step of global step ``at``."""

    def __init__(self, backbone, at: int) -> None:
        super().__init__(backbone)
        self.at = at

    def training_step(self, batch, batch_idx):
        if self.global_step == self.at:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_an_exception_ending_fit_leaves_partial_statistics(tmp_path):
    callbacks = [*monitors(), GradScaleMonitor(log_every_n_steps=1), MetricsMonitor()]
    fit = trainer(tmp_path, callbacks, max_steps=20, max_epochs=-1)
    with pytest.raises(RuntimeError, match="boom"):
        fit.fit(Explodes(mlp(dropout=0.2), at=10), datamodule=TinyData())  # 8 steps per epoch
    # The correlation monitor records in the test loop only: nothing of it in this fit, no file.
    assert not (tmp_path / "stats" / FILES["node_correlation"]).exists()
    stats = {
        name: read_stats(tmp_path / "stats" / FILES[name]) for name in FILES if name != "node_correlation"
    }
    assert all(s["partial"] is True for s in stats.values())
    assert stats["grad_info"]["steps"] == list(range(10))
    assert stats["grad_scale"]["steps"] == list(range(10))
    # Saturation's step 10 started accumulating but never finished: it is not recorded.
    assert stats["saturation"]["steps"] == list(range(10))
    assert stats["net_var"]["steps"] == [1, 3, 5, 7, 9]
    assert [e["epoch"] for e in stats["metrics"]["epochs"]] == [1]
    assert set(stats["weight_hist"]["layers"]["backbone.0"]) == {"init"}
    assert (tmp_path / "report" / "grad_info.png").is_file()
    leftovers = [m for m in fit.lightning_module.modules() if m._forward_pre_hooks or m._forward_hooks]
    assert leftovers == []


def test_resumed_fit_continues_every_history_without_gaps_or_repeats(tmp_path):
    def callbacks():
        return [
            NetVarMonitor(log_every_n_steps=2, repeats=3),
            GradScaleMonitor(log_every_n_steps=1),
            WeightHistMonitor(bins=5),
            MetricsMonitor(),
        ]

    first = callbacks()
    fit = trainer(tmp_path / "a", first, max_steps=-1, max_epochs=1)
    fit.fit(TinyModule(mlp(dropout=0.3)), datamodule=TinyData())
    fit.save_checkpoint(tmp_path / "epoch1.ckpt")
    second = callbacks()
    trainer(tmp_path / "b", second, max_steps=-1, max_epochs=2).fit(
        TinyModule(mlp(dropout=0.3)), datamodule=TinyData(), ckpt_path=tmp_path / "epoch1.ckpt"
    )
    assert second[0].steps == [1, 3, 5, 7, 9, 11, 13, 15]
    assert second[0].history["backbone.4"][:4] == first[0].history["backbone.4"]
    assert second[1].steps == list(range(16))
    assert second[2].records["backbone.0"]["init"] == first[2].records["backbone.0"]["init"]
    assert [e["epoch"] for e in second[3].epochs] == [1, 2]
    saved = json.loads((tmp_path / "b" / "stats" / "net_var.json").read_text())
    assert saved["steps"] == second[0].steps
