"""The monitors' files on a real machine: where they go, a failed resume, a diverged loss, a full disk."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from _disk_helpers import fill, small_tmpfs
from _monitor_helpers import TinyData, TinyModule, mlp, monitors, trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from lightning_gaaf.callbacks import GradInfoMonitor, GradScaleMonitor, MetricsMonitor
from lightning_gaaf.callbacks.history import FirstNonFinite
from lightning_gaaf.stats import StatsFileError, StatsWriteError, read_stats, write_stats


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- where the files go ----------------------------------------------------------------------------


def test_a_plain_trainer_writes_into_its_log_dir_not_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monitor = GradInfoMonitor(log_every_n_steps=1)
    fit = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    fit.fit(TinyModule(mlp()), datamodule=TinyData())
    log_dir = Path(fit.log_dir)
    assert log_dir == tmp_path / "lightning_logs" / "version_0"
    assert read_stats(log_dir / "stats" / "grad_info.json")["steps"] == [0, 1]
    assert (log_dir / "report" / "grad_info.png").is_file()
    assert not (tmp_path / "stats").exists() and not (tmp_path / "report").exists()


def test_run_directory_without_logger_and_an_explicit_dirpath(tmp_path):
    # gaaf-fit's layout: the run directory is default_root_dir (with logger=False, or a W&B logger
    # saving there, it is also trainer.log_dir); gaaf-report RUN_DIR reads RUN_DIR/stats.
    plain = GradInfoMonitor(log_every_n_steps=1)
    trainer(tmp_path / "run", [plain], max_steps=2).fit(TinyModule(mlp()), datamodule=TinyData())
    assert read_stats(tmp_path / "run" / "stats" / "grad_info.json")["steps"] == [0, 1]

    placed = GradInfoMonitor(log_every_n_steps=1)
    placed.dirpath = tmp_path / "chosen"
    logger = CSVLogger(tmp_path / "logs", name="csv", version=0)
    trainer(tmp_path / "root", [placed], max_steps=2, logger=logger).fit(
        TinyModule(mlp()), datamodule=TinyData()
    )
    assert read_stats(tmp_path / "chosen" / "stats" / "grad_info.json")["steps"] == [0, 1]
    assert not (tmp_path / "logs" / "csv" / "version_0" / "stats").exists()


# -- a failed resume changes nothing -------------------------------------------------------------


def fit_run(run: Path, width: int = 8, ckpt_path: Path | None = None, test: bool = False) -> None:
    callbacks = [
        *monitors(),
        GradScaleMonitor(log_every_n_steps=1),
        MetricsMonitor(),
        ModelCheckpoint(dirpath=run / "checkpoints", save_last=True),
    ]
    fit = trainer(run, callbacks, max_steps=-1, max_epochs=1, enable_checkpointing=True)
    model, data = TinyModule(mlp(hidden=(width, 8))), TinyData()
    fit.fit(model, datamodule=data, ckpt_path=ckpt_path)
    if test:
        fit.test(model, datamodule=data)


def test_a_failed_resume_leaves_the_saved_statistics_as_they_were(tmp_path):
    run = tmp_path / "run"
    fit_run(run, test=True)
    before = {k: v for k, v in files_under(run).items() if not k.startswith("checkpoints")}
    assert {"stats/metrics.json", "stats/saturation.json", "stats/node_correlation.json"} <= set(before)
    assert len(before["stats/metrics.json"]) > 200

    last = run / "checkpoints" / "last.ckpt"
    cut = run / "checkpoints" / "cut.ckpt"
    cut.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises((RuntimeError, OSError)):  # the truncated file cannot be read
        fit_run(run, ckpt_path=cut)
    with pytest.raises(RuntimeError, match="size mismatch"):  # a wider model does not fit the checkpoint
        fit_run(run, width=16, ckpt_path=last)

    after = {k: v for k, v in files_under(run).items() if not k.startswith("checkpoints")}
    assert after == before


# -- non-finite values ------------------------------------------------------------------------------


def test_non_finite_values_round_trip_through_the_stats_file(tmp_path):
    payload = {
        "layers": {"a/b": [1.0, math.nan, math.inf], "c~d": -math.inf, "e": [[0.5, np.float32("nan")]]},
        "summary": {"x": math.nan, "y": 2.0, "z": None},
    }
    path = write_stats(tmp_path, "grad_info", payload)
    raw = json.loads(path.read_text())  # plain JSON: null in lists, members left out
    assert raw["layers"] == {"a/b": [1.0, None, None], "e": [[0.5, None]]}
    assert raw["summary"] == {"y": 2.0, "z": None}
    assert raw["nonfinite"] == {
        "/layers/a~1b/1": "nan",
        "/layers/a~1b/2": "inf",
        "/layers/c~0d": "-inf",
        "/layers/e/0/1": "nan",
        "/summary/x": "nan",
    }
    back = read_stats(path)
    assert back["layers"]["a/b"][0] == 1.0 and math.isnan(back["layers"]["a/b"][1])
    assert back["layers"]["a/b"][2] == math.inf and back["layers"]["c~d"] == -math.inf
    assert math.isnan(back["layers"]["e"][0][1]) and math.isnan(back["summary"]["x"])
    assert back["summary"]["z"] is None and "nonfinite" not in back

    raw["nonfinite"] = {"/layers/nowhere/3": "nan"}
    path.write_text(json.dumps(raw))
    with pytest.raises(StatsFileError, match="points nowhere"):
        read_stats(path)
    (tmp_path / "old.json").write_text(
        json.dumps({"schema_version": 1, "statistic": "grad_info", "s": [None]})
    )
    assert read_stats(tmp_path / "old.json")["s"] == [None]  # version 1 had no marker: null stays None


class Diverges(TinyModule):
    """The loss returned at global step 3 is infinite; the weights are NaN after that step."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * math.inf if self.global_step == 3 else loss


def test_a_diverged_loss_is_recorded_with_its_first_step(tmp_path):
    metrics, grad = MetricsMonitor(), GradInfoMonitor(log_every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [metrics, grad], max_steps=-1, max_epochs=1).fit(
            Diverges(mlp()), datamodule=TinyData()
        )  # 8 steps
    assert metrics.diverged == {"step": 3, "key": "loss", "value": "inf"}
    said = [str(w.message) for w in caught if "diverged" in str(w.message)]
    assert said == ["MetricsMonitor: the run diverged at step 3: loss is inf"]

    raw = json.loads((tmp_path / "stats" / "metrics.json").read_text())
    assert raw["diverged"] == {"step": 3, "key": "loss", "value": "inf"}
    assert "train/loss" not in raw["epochs"][0] and raw["nonfinite"]["/epochs/0/train~1loss"] == "nan"
    saved = read_stats(tmp_path / "stats" / "metrics.json")
    assert math.isnan(saved["epochs"][0]["train/loss"])
    history = read_stats(tmp_path / "stats" / "grad_info.json")["layers"]["backbone.0"]
    assert all(math.isfinite(v) for v in history[:3]) and all(math.isnan(v) for v in history[4:])


def test_the_device_side_check_keeps_the_first_non_finite_step():
    watch = FirstNonFinite()
    for step, value in [(0, 1.0), (1, 2.0), (2, -math.inf), (3, math.nan), (4, 1.0)]:
        watch.update_on_device(step, torch.tensor(value))
    assert watch.result() == (2, -math.inf)
    finite = FirstNonFinite()
    finite.update_on_device(0, torch.tensor(0.5))
    assert finite.result() is None


def test_a_finite_run_has_no_divergence(tmp_path):
    metrics = MetricsMonitor()
    trainer(tmp_path, [metrics], max_steps=-1, max_epochs=1).fit(TinyModule(mlp()), datamodule=TinyData())
    assert metrics.diverged is None
    raw = json.loads((tmp_path / "stats" / "metrics.json").read_text())
    assert raw["diverged"] is None and raw["nonfinite"] == {}


# -- a full disk ----------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (needs the right to mount, e.g. root): a disk that really fills up."""
    with small_tmpfs(tmp_path / "disk", "64k") as mount:
        yield mount


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temporary_file(small_disk):
    stats = small_disk / "run" / "stats"
    write_stats(stats, "metrics", {"epochs": [{"epoch": 1, "step": 8, "val/acc": 0.5}]})
    before = (stats / "metrics.json").read_bytes()
    fill(small_disk)
    epochs = [{"epoch": e, "step": 8 * e, "val/acc": 0.5} for e in range(1, 2000)]
    with pytest.raises(StatsWriteError) as caught:
        write_stats(stats, "metrics", {"epochs": epochs})
    message = str(caught.value)
    assert message == f"cannot write {stats / 'metrics.json'}: No space left on device"
    assert (stats / "metrics.json").read_bytes() == before
    assert sorted(p.name for p in stats.iterdir()) == ["metrics.json"]


def test_a_fit_on_a_full_disk_fails_with_one_line_and_no_temporary_files(small_disk):
    run = small_disk / "run"
    fill(small_disk)
    with pytest.raises(StatsWriteError, match=r"^cannot write .*metrics\.json: No space left on device$"):
        trainer(
            run, [MetricsMonitor(), GradInfoMonitor(log_every_n_steps=1)], max_steps=-1, max_epochs=1
        ).fit(TinyModule(mlp()), datamodule=TinyData())
    assert [p.name for p in small_disk.rglob("*") if p.is_file()] == ["filler"]
