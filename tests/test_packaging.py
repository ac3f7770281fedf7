"""The wheel as a user gets it: built from the tracked sources, installed into a new virtual
environment, and run from a directory that has nothing to do with the checkout."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from _cli_helpers import REPO, fit_env

from lightning_gaaf.datamodules.synthetic import write_mnist

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
    checkout stays invisible and ``lightning_gaaf`` can only come from the wheel. The running pip
    installs into it (``pip --python``), so the environment needs no pip of its own.
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
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    purelib = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp).strip()
    )
    (purelib / "_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--quiet",
        "--no-deps",
        "--no-index",
    ]
    _run([*pip, str(wheels[0])], cwd=tmp)
    return venv


def _env(data: Path) -> dict[str, str]:
    # No test here reads W&B (tests/test_callbacks_wandb.py does): its service start-up would be the
    # slowest part of these short runs.
    env = fit_env(data, WANDB_MODE="disabled")
    env.pop("PYTHONPATH", None)  # nothing but the wheel may provide lightning_gaaf
    return env


@dataclass
class Program:
    """A command of the installed wheel, started in ``cwd`` (a folder unrelated to the checkout)."""

    command: list[str]
    cwd: Path
    env: dict[str, str]
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def output(self, timeout: float = 900) -> str:
        """Its standard output once it has exited with status 0."""
        assert self.process is not None
        out, err = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, f"{self.command}\n{out[-2000:]}\n{err[-3000:]}"
        return out


@pytest.fixture(scope="module")
def programs(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Program]:
    """The wheel's programs the tests below check, all started at once (each spends most of its time
    importing, on one core), before any test reads one."""
    tmp = tmp_path_factory.mktemp("wheel_programs")
    bin_dir = installed / "bin"
    write_mnist(tmp / "mnist", n_train=1500, n_test=200)
    listing = "import lightning_gaaf; print(lightning_gaaf.__file__)\n"
    listing += "from lightning_gaaf.cli.fit import main; main(['--list-configs'])"
    # A config by name (the MLP one: its training is not what is tested here, tests/test_configs.py
    # builds every config).
    fit = ["--config", "mnist_gaaf.yaml", "--data.val_size", "32"]
    fit += ["--data.batch_size", "16", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    fit += ["--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]
    fit += ["--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1"]
    reproduce = [str(bin_dir / "gaaf-reproduce"), "mnist", "--quick", "--max-epochs", "1"]
    reproduce += ["--out", str(tmp / "reproduce")]  # one epoch: the numbers are tests/test_reproduce.py's
    started = {
        "list": Program([str(bin_dir / "python"), "-c", listing], tmp / "list", _env(tmp)),
        "fit": Program([str(bin_dir / "gaaf-fit"), *fit], tmp / "fit", _env(tmp / "mnist")),
        "reproduce": Program(reproduce, tmp / "elsewhere", _env(tmp / "mnist")),
    }
    for program in started.values():
        program.start()
    yield started
    for program in started.values():
        if program.process is not None and program.process.poll() is None:
            program.process.kill()
            program.process.communicate()


def test_wheel_ships_the_configs_and_runs_them_by_name(installed: Path, programs: dict[str, Program]) -> None:
    where, *listed = programs["list"].output().splitlines()
    assert Path(where.strip()).is_relative_to(installed), where
    assert len(listed) >= 15 and any(line.startswith("cifar100_bn_gaaf") for line in listed)

    fit = programs["fit"]
    out = fit.output()
    run_dir = fit.cwd / "runs" / "mnist_gaaf" / "version_0"
    assert f"run directory: {run_dir}" in out
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_wheel_reproduces_mnist_quick_with_its_bundled_configs(programs: dict[str, Program]) -> None:
    reproduce = programs["reproduce"]
    reproduce.output()
    out = Path(reproduce.command[reproduce.command.index("--out") + 1])
    assert (out / "table4.md").read_text().count("|") > 10
    assert not (reproduce.cwd / "configs").exists() and os.listdir(reproduce.cwd) == []
