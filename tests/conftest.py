"""Shared test settings (W&B never goes online from the test suite) and the fixtures several files share."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_CONSOLE", "off")
# Inductor compilation takes seconds per shape; unit tests check the math on the eager path and
# test the compiled path explicitly where it matters.
os.environ.setdefault("GAAF_BACKEND", "eager")
# One thread count for every run of the suite, in-process or not, whatever the machine's load: the
# resume tests compare weights bit for bit, which holds for the same thread count only. The policy
# itself is tested in test_threads.py and test_run_outcome.py.
os.environ.setdefault("GAAF_THREADS", "off")
# Under pytest-xdist every worker (and every program it starts) uses one intra-op thread: two
# workers with two spinning OpenMP threads each on two cores would slow each other several times.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

#: At most this many pytest-xdist workers for ``-n auto`` (pyproject's addopts): each holds torch,
#: Lightning and the session runs in memory, and the suite's multi-process tests need cores too.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per usable core, at most ``MAX_WORKERS``; none on a single core."""
    from lightning_gaaf.run.threads import usable_cores

    workers = min(usable_cores(), MAX_WORKERS)
    return workers if workers > 1 else 0


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny synthetic MNIST in torchvision's raw layout (256 training, 64 test images)."""
    from lightning_gaaf.datamodules.synthetic import write_mnist

    root = tmp_path_factory.mktemp("mnist")
    write_mnist(root, n_train=256, n_test=64, seed=0)
    return root


@pytest.fixture(scope="session")
def logged_fit(tmp_path_factory: pytest.TempPathFactory):
    """One tiny fit with every monitor and all four loggers (see ``_logged_fit.py``), shared by the logger tests."""
    from _logged_fit import run_logged_fit

    return run_logged_fit(tmp_path_factory.mktemp("logged_fit"))


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path):
    """One tiny gaaf-fit of mnist_gaaf in this process, W&B and three more loggers on (``_fit_helpers.py``):
    3 epochs of 6 steps on the synthetic MNIST, for tests that read a finished run rather than start one."""
    from _cli_helpers import CONFIGS, tiny
    from _fit_helpers import reference_run

    return reference_run(tmp_path_factory.mktemp("reference_run"), mnist_dir, CONFIGS, tiny(3, 6))


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path):
    """The session's one 2-process CPU DDP run of gaaf-fit (``_cli_runs.py``); the tests that read it
    carry ``xdist_group("ddp")`` so that one pytest-xdist worker starts it once."""
    from _cli_runs import start_ddp_run

    _claim_for_this_worker(tmp_path_factory, "ddp_run")
    return start_ddp_run(tmp_path_factory.mktemp("ddp_run"), mnist_dir)


def _claim_for_this_worker(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    """Fail when a second pytest-xdist worker builds the session run ``name``: its tests' xdist_group
    was split (``--dist loadgroup`` not honoured), and two workers would launch DDP runs at once."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return
    owner = tmp_path_factory.getbasetemp().parent / f"{name}.worker"  # shared by the run's workers
    try:
        with owner.open("x") as f:
            f.write(worker)
    except FileExistsError:
        pytest.fail(
            f"{name} is built by {worker} after {owner.read_text()}: the tests of xdist_group "
            f"'{name.split('_')[0]}' were split across workers (pytest-xdist's --dist loadgroup does not "
            "work with this pytest; see pyproject.toml)"
        )


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Name the test order even under ``-q`` (which hides pytest-randomly's header line)."""
    if config.pluginmanager.hasplugin("randomly"):
        seed = config.getoption("randomly_seed")
        terminalreporter.write_line(
            f"test order: -p randomly --randomly-seed={seed} repeats it; -p no:randomly keeps the file order"
        )
