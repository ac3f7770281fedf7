"""The wheel as a user gets it: built from the tracked sources, installed into a new virtual
environment, and run from a directory that has nothing to do with the checkout."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from _cli_helpers import REPO, fit_env

from lightning_gaaf.datamodules.synthetic import write_cifar100, write_mnist

pytestmark = pytest.mark.slow

_NOT_SOURCES = shutil.ignore_patterns(
    ".git", "build", "dist", "runs", "wandb", "data", "*.egg-info", "__pycache__", ".venv*", ".*_cache"
)


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with the wheel installed; its dependencies come from the running one.

    The test environment's site-packages are added by a ``.pth`` line (so torch is not installed
    twice); a plain path line does not run the ``.pth`` files there, so an editable install of the
    checkout stays invisible and ``lightning_gaaf`` can only come from the wheel.
    """
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCES)
    _run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist")],
        cwd=source,
    )
    wheels = list((tmp / "dist").glob("lightning_gaaf-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    purelib = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp).strip()
    )
    (purelib / "_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheels[0])], cwd=tmp)
    return venv


def _env(data: Path) -> dict[str, str]:
    env = fit_env(data)
    env.pop("PYTHONPATH", None)  # nothing but the wheel may provide lightning_gaaf
    return env


def test_wheel_ships_the_configs_and_runs_them_by_name(installed: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bin_dir = installed / "bin"
    where = _run(
        [str(bin_dir / "python"), "-c", "import lightning_gaaf; print(lightning_gaaf.__file__)"], elsewhere
    )
    assert Path(where.strip()).is_relative_to(installed), where
    listed = _run([str(bin_dir / "gaaf-fit"), "--list-configs"], elsewhere, env=_env(tmp_path))
    assert len(listed.splitlines()) >= 15 and "cifar100_bn_gaaf" in listed

    write_cifar100(tmp_path / "data", n_train=96, n_test=32)
    args = ["--config", "cifar100_bn_gaaf.yaml", "--data.verify_checksums", "false", "--data.val_size", "32"]
    args += ["--data.batch_size", "16", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    args += ["--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1"]
    out = _run([str(bin_dir / "gaaf-fit"), *args], elsewhere, env=_env(tmp_path / "data"))
    run_dir = elsewhere / "runs" / "cifar100_bn_gaaf" / "version_0"
    assert f"run directory: {run_dir}" in out
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_wheel_reproduces_mnist_quick_with_its_bundled_configs(installed: Path, tmp_path: Path) -> None:
    write_mnist(tmp_path / "data", n_train=1500, n_test=200)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _env(tmp_path / "data")
    cmd = [str(installed / "bin" / "gaaf-reproduce"), "mnist", "--quick", "--out", str(tmp_path / "out")]
    _run(cmd, elsewhere, env=env, timeout=900)
    assert (tmp_path / "out" / "table4.md").read_text().count("|") > 10
    assert not (elsewhere / "configs").exists() and os.listdir(elsewhere) == []
