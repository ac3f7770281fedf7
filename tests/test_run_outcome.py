"""How a run ends and where its files go, as gaaf-fit reports them: divergence, the monitors' files
in the run directory whatever the first logger, and the thread policy's header and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _cli_helpers import CONFIGS, fit_env, tiny
from _fit_helpers import fit_in_process

from lightning_gaaf.run.result import DIVERGED_EXIT_CODE


def test_a_diverged_run_says_so_and_exits_3(tmp_path: Path, mnist_dir: Path) -> None:
    # A learning rate this large sends the output layer's weights to infinity in the first steps.
    result = fit_in_process(
        "--config", str(CONFIGS / "mnist_base.yaml"), *tiny(1, 4),
        "--model.optimizer.init_args.lr", "1e38",
        cwd=tmp_path, env=fit_env(mnist_dir),
    )  # fmt: skip
    assert result.returncode == DIVERGED_EXIT_CODE == 3, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("gaaf-fit: the run diverged")]
    assert len(lines) == 1 and "at step" in lines[0] and "smaller learning rate" in lines[0], result.stderr
    metrics = json.loads((tmp_path / "runs/mnist_base/version_0/stats/metrics.json").read_text())
    assert metrics["diverged"]["step"] >= 1 and metrics["diverged"]["value"] in ("nan", "inf", "-inf")


def test_monitors_write_into_the_run_directory_whatever_the_first_logger(
    tmp_path: Path, mnist_dir: Path
) -> None:
    csv = tmp_path / "csv_logs"
    result = fit_in_process(
        "--config", str(CONFIGS / "mnist_gaaf.yaml"), *tiny(1, 4),
        "--trainer.logger", "pytorch_lightning.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(csv),
        cwd=tmp_path, env=fit_env(mnist_dir),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "runs/mnist_gaaf/version_0"
    assert (run_dir / "stats/metrics.json").is_file()
    assert {p.name for p in (run_dir / "stats").iterdir()} >= {"metrics.json", "saturation.json"}
    assert not list(csv.rglob("stats")), "statistics went to the logger's folder, not the run directory"
    assert list(csv.rglob("metrics.csv")), sorted(map(str, csv.rglob("*")))  # the logger got its scalars


def _gaaf_fit(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightning_gaaf.cli.fit", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=600,
    )  # fmt: skip


def test_a_malformed_thread_setting_is_one_line_and_exit_2(tmp_path: Path, mnist_dir: Path) -> None:
    env = {**fit_env(mnist_dir), "GAAF_THREADS": "many"}
    proc = _gaaf_fit(["--config", "mnist_gaaf"], env, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("gaaf-fit: error: ") and "GAAF_THREADS" in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_the_run_header_names_the_thread_policy(tmp_path: Path, mnist_dir: Path) -> None:
    env = {**fit_env(mnist_dir), "GAAF_THREADS": "1"}
    env.pop("OMP_NUM_THREADS", None)
    threads = torch.get_num_threads()
    try:
        result = fit_in_process(
            "--config", "mnist_base", *tiny(1, 2), "--trainer.limit_val_batches", "1", cwd=tmp_path, env=env
        )
        assert torch.get_num_threads() == 1  # torch was imported already: the count is what applies
    finally:
        torch.set_num_threads(threads)
    assert result.returncode == 0, result.stderr[-2000:]
    first = result.stdout.splitlines()[0]
    assert first.startswith("gaaf-fit: threads: 1 ") and "GAAF_THREADS=1" in first, first
    assert os.environ.get("GAAF_THREADS") == "off"  # the program's environment did not leak


def test_the_wandb_logger_starts_without_the_retired_anonymous_setting(tmp_path: Path) -> None:
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import WandbLogger

    from lightning_gaaf.run.wandb_run import drop_anonymous_setting

    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    # Lightning's private init arguments: if this fails, Lightning renamed them; revisit drop_anonymous_setting.
    assert logger._wandb_init["anonymous"] is None
    trainer = pl.Trainer(logger=logger, default_root_dir=tmp_path, enable_checkpointing=False)
    drop_anonymous_setting(trainer)
    assert "anonymous" not in logger._wandb_init and logger._wandb_init["project"] == "lightning_logs"


@pytest.mark.skipif(
    not torch.version.cuda or torch.cuda.is_available(),
    reason="the notice comes from a CUDA build of torch on a machine without a GPU",
)
def test_the_compiled_backend_silences_only_the_no_cuda_runtime_notice(tmp_path: Path) -> None:
    """Inductor imports torch.utils.cpp_extension to build the compiled kernels; with a CUDA_HOME and no
    GPU that import logs "No CUDA runtime is found". A fresh process, so that the import happens in it,
    in the order of a compiled run: the backend module first, then inductor's build."""
    cuda_home = tmp_path / "cuda"
    cuda_home.mkdir()
    code = (
        "import logging, lightning_gaaf.activations.backends.compiled\n"
        "import torch.utils.cpp_extension\n"
        "logging.getLogger('torch.utils.cpp_extension').warning('another notice passes')\n"
    )
    env = {**os.environ, "CUDA_HOME": str(cuda_home)}
    plain = subprocess.run(
        [sys.executable, "-c", "import torch.utils.cpp_extension"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert "No CUDA runtime is found" in plain.stderr  # what torch says without the backend's filter
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "No CUDA runtime" not in proc.stdout + proc.stderr
    assert "another notice passes" in proc.stderr
