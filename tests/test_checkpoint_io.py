"""Checkpoints are written whole or not at all: on a real full disk (a small tmpfs) the previous
checkpoint stays byte for byte, no piece or temporary file is left, and gaaf-fit says so in one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from _cli_helpers import CONFIGS, fit_env, tiny
from _disk_helpers import fill, small_tmpfs
from _fit_helpers import fit_in_process
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from lightning_gaaf.run.builder import GaafCLI
from lightning_gaaf.run.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError

HERE = Path(__file__).resolve().parent
#: A model whose checkpoint (~125 KB with SGD momentum) fits a 1 MiB disk a few times over.
SMALL_MODEL = ["--model.backbone.init_args.hidden", "[16]"]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "256k") as disk:
        path = disk / "checkpoints" / "last.ckpt"
        io = AtomicCheckpointIO()
        io.save_checkpoint({"step": 1, "w": torch.zeros(1000)}, path)
        before = path.read_bytes()
        assert io.load_checkpoint(path)["step"] == 1
        fill(disk)
        with pytest.raises(CheckpointWriteError) as caught:
            io.save_checkpoint({"step": 2, "w": torch.zeros(20_000)}, path)
        assert str(caught.value) == f"could not write checkpoint {path}: No space left on device"
        assert path.read_bytes() == before
        assert _files(disk) == ["checkpoints/last.ckpt", "filler"]
        (disk / "filler").unlink()
        io.save_checkpoint({"step": 3, "w": torch.zeros(20_000)}, path)  # room again: replaced whole
        assert io.load_checkpoint(path)["step"] == 3 and _files(disk) == ["checkpoints/last.ckpt"]


def test_a_fit_whose_checkpoint_does_not_fit_stops_with_one_line(tmp_path: Path, mnist_dir: Path) -> None:
    """Epoch 1's checkpoints fit; at epoch 2's end the disk is full but for 32 KiB (room for the stats
    files) and the checkpoint grows by 256 KiB (it fits neither beside nor in place of the previous one):
    the run stops with exit 2 and epoch 1's checkpoints are untouched."""
    snapshot = tmp_path / "epoch1"
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        run = disk / "run"
        fill_at = ["--trainer.callbacks+=_disk_helpers.FillDiskAtEpochEnd"]
        fill_at += ["--trainer.callbacks.init_args.disk", str(disk)]
        fill_at += ["--trainer.callbacks.init_args.snapshot", str(snapshot)]
        fill_at += ["--trainer.callbacks.init_args.keep_free", str(32 * 1024)]
        fill_at += ["--trainer.callbacks.init_args.grow", str(256 * 1024)]
        env = fit_env(mnist_dir, PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
        result = fit_in_process(
            "--config", str(CONFIGS / "mnist_gaaf.yaml"), *tiny(3, 4), *SMALL_MODEL, *fill_at,
            "--run_dir", str(run), cwd=tmp_path, env=env,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr[-3000:]
        last = run / "checkpoints" / "last.ckpt"
        errors = [line for line in result.stderr.splitlines() if line.startswith("gaaf-fit: error")]
        assert errors == [f"gaaf-fit: error: could not write checkpoint {last}: No space left on device"]
        assert "Traceback" not in result.stderr
        kept = sorted(p.name for p in snapshot.iterdir())
        assert "last.ckpt" in kept and len(kept) == 2  # last.ckpt and the best epoch's
        assert sorted(p.name for p in last.parent.iterdir()) == kept
        for name in kept:
            assert (last.parent / name).read_bytes() == (snapshot / name).read_bytes(), name
        assert not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]
        assert torch.load(last, weights_only=False)["global_step"] == 4


@pytest.mark.parametrize("strategy", [[], ["--trainer.devices", "2", "--trainer.strategy", "ddp"]])
def test_every_strategy_gets_the_atomic_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = ["--config", "mnist_base", "--trainer.accelerator", "cpu", *strategy, "--run_dir", "run"]
    cli = GaafCLI(args=args)
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO


def test_a_checkpoint_plugin_of_the_config_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    plugin = "lightning_fabric.plugins.io.torch_io.TorchCheckpointIO"
    cli = GaafCLI(args=["--config", "mnist_base", "--trainer.plugins", plugin, "--run_dir", "run"])
    assert type(cli.trainer.strategy.checkpoint_io) is TorchCheckpointIO
