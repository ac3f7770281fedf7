"""gaaf-tune on tiny synthetic MNIST: outputs, resumption, workers on one storage, PostgreSQL, pruning.

The study logic runs gaaf-tune's main in this process (its trials are in-process fits anyway); real
processes remain where the process boundary is tested: local workers, two hosts on PostgreSQL, SIGTERM.
"""

from __future__ import annotations

import csv
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from _cli_helpers import CONFIGS, TINY, fit_env, history, run_meta, wandb_records
from _fit_helpers import run_entry_point
from _tune_helpers import run_program, stub_fit, stub_val_acc

import lightning_gaaf.run
from lightning_gaaf.cli.tune.search_space import SearchSpaceError, load_space, nested, overrides_yaml
from lightning_gaaf.cli.tune.storage import PrunerSpecError, make_pruner, open_storage
from lightning_gaaf.cli.tune.study import fail_interrupted_trials
from lightning_gaaf.datamodules.synthetic import write_mnist

BASE = str(CONFIGS / "mnist_base.yaml")


def tune_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lightning_gaaf.cli.tune", *args]


def run_tune(*args: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        tune_command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune_data")
    write_mnist(root, n_train=256, n_test=64)
    return root


def trials_of(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(storage)).get_trials()


def best_val_acc(run_dir: Path) -> float:
    epochs = json.loads((run_dir / "stats" / "metrics.json").read_text())["epochs"]
    return max(e["val/acc"] for e in epochs if "val/acc" in e)


def check_no_trial_lost_or_duplicated(trials: list[optuna.trial.FrozenTrial], n: int) -> None:
    assert [t.number for t in trials] == list(range(n))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [t.state for t in trials]
    run_dirs = [Path(t.user_attrs["run_dir"]) for t in trials]
    assert len(set(run_dirs)) == n
    for t, run_dir in zip(trials, run_dirs, strict=True):
        assert run_dir.name == f"trial_{t.number:04d}"
        assert t.value == pytest.approx(best_val_acc(run_dir))  # the objective is the run's own record


# --------------------------------------------------------------------------- search spaces, pruners
def test_search_space_file_is_checked(tmp_path):
    good = tmp_path / "space.yaml"
    good.write_text(
        "fixed: {gaaf.shape: gauss}\n"
        "params:\n"
        "  model.optimizer.init_args.lr: {type: float, low: 1.0e-3, high: 0.3, log: true}\n"
        "  data.init_args.batch_size: {type: categorical, choices: [16, 32]}\n"
        "  gaaf.shape_kwargs.c: {type: float, low: 0.5, high: 5}\n"
    )
    space = load_space(good)
    assert space.metric == "val/acc" and space.direction == "maximize"
    assert space.params["model.optimizer.init_args.lr"].log is True
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    values = space.suggest(trial)
    assert values["gaaf.shape"] == "gauss" and 1e-3 <= values["model.optimizer.init_args.lr"] <= 0.3
    assert yaml.safe_load(overrides_yaml(values)) == {
        "gaaf": {"shape": "gauss", "shape_kwargs": {"c": values["gaaf.shape_kwargs.c"]}},
        "model": {"optimizer": {"init_args": {"lr": values["model.optimizer.init_args.lr"]}}},
        "data": {"init_args": {"batch_size": values["data.init_args.batch_size"]}},
    }
    assert load_space(
        _write(tmp_path, "metric: val/loss\nparams: {a: {type: int, low: 1, high: 3}}")
    ).direction == ("minimize")

    cases = {
        "params: {a: {type: normal, low: 0, high: 1}}": "parameter 'a': type must be one of float, int, categorical",
        "params: {a: {type: float, low: 0}}": "parameter 'a': 'low' and 'high' are required",
        "params: {a: {type: float, low: 0, high: 1, lg: true}}": "parameter 'a': unknown field(s) lg",
        "params: {a: {type: categorical, choices: []}}": "'choices' must be a non-empty list",
        "params: {a: {type: float, low: 0, high: 1}}\nfixed: {a: 2}": "a both fixed and tuned",
        "param: {a: {type: float, low: 0, high: 1}}": "expected a mapping with a non-empty 'params' mapping",
        "params: {a: {type: float, low: 0, high: 1}}\ndirection: up": "direction must be minimize or maximize",
        "params: {a: {type: float, low: 2, high: 1}}": "parameter 'a'",
    }
    for text, message in cases.items():
        with pytest.raises(SearchSpaceError, match="search space .*space.yaml") as err:
            load_space(_write(tmp_path, text))
        assert message in str(err.value)
    with pytest.raises(SearchSpaceError, match="no such file"):
        load_space(tmp_path / "missing.yaml")
    with pytest.raises(SearchSpaceError, match="goes below another parameter"):
        nested({"a": 1, "a.b": 2})


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_pruner_specs():
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)
    median = make_pruner("median:2:3")
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps) == (2, 3)
    assert make_pruner("threshold:0.5", "maximize")._lower == 0.5
    assert make_pruner("threshold:0.5", "minimize")._upper == 0.5
    for bad in ("mean", "median:a", "threshold", "none:1"):
        with pytest.raises(PrunerSpecError, match=f"pruner '{bad}'"):
            make_pruner(bad)


def test_trial_of_a_dead_worker_is_failed_and_redone(tmp_path):
    storage = str(tmp_path / "study.journal")
    study = optuna.create_study(study_name="s", storage=open_storage(storage), direction="maximize")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = study.ask()
    alive.set_user_attr("host", socket.gethostname())
    alive.set_user_attr("pid", os.getpid())
    orphan = study.ask()
    orphan.set_user_attr("host", socket.gethostname())
    orphan.set_user_attr("pid", dead.pid)
    elsewhere = study.ask()
    elsewhere.set_user_attr("host", "another-machine")
    elsewhere.set_user_attr("pid", dead.pid)
    assert fail_interrupted_trials(study) == [orphan.number]
    states = [t.state for t in study.get_trials()]
    assert states == [
        optuna.trial.TrialState.RUNNING,
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.RUNNING,
    ]


# --------------------------------------------------------------------------- the command
def tune_in_process(*args: str, cwd: Path, env: dict[str, str]):
    """``gaaf-tune ARGS`` in this process (trials run in-process anyway): exit status and output."""
    from lightning_gaaf.cli.tune import main as tune

    return run_program(tune.main, args, cwd, env)


def test_tiny_search_writes_a_runnable_best_config_and_continues(tmp_path, data_dir, monkeypatch):
    env = fit_env(data_dir)
    out = tmp_path / "study"
    args = [BASE, "--trials", "3", "--out", str(out), "--sampler-seed", "0", "--pruner", "none", "--", *TINY]
    proc = tune_in_process(*args, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0/3 trials done" in proc.stdout
    storage = str(out / "study.journal")
    assert (out / "study.journal").is_file()
    trials = trials_of(storage, "mnist_base")
    check_no_trial_lost_or_duplicated(trials, 3)
    lrs = [t.params["model.optimizer.init_args.lr"] for t in trials]
    assert len(set(lrs)) == 3 and all(3e-3 <= lr <= 0.3 for lr in lrs)
    for t in trials:  # the trial really trained with its learning rate and never ran the test set
        run_dir = Path(t.user_attrs["run_dir"])
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["model"]["init_args"]["optimizer"]["init_args"]["lr"] == pytest.approx(
            t.params["model.optimizer.init_args.lr"]
        )
        assert json.loads((run_dir / "stats" / "metrics.json").read_text())["test"] == {}
    # Each trial is an ordinary gaaf-fit run with its W&B run, grouped by study.
    records = wandb_records(Path(trials[0].user_attrs["run_dir"]))
    assert run_meta(records)["run_group"] == "mnist_base"
    assert "val/acc" in history(records)

    summary = json.loads((out / "study.json").read_text())
    best = max(trials, key=lambda t: t.value)
    assert summary["best"]["number"] == best.number and summary["trials"] == {"complete": 3}
    with (out / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["number"]) for r in rows] == [0, 1, 2]
    assert [float(r["value"]) for r in rows] == pytest.approx([t.value for t in trials])
    assert (out / "trials.md").read_text().splitlines()[0].startswith("| number | state | val/acc |")
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    best_yaml = (out / "best.yaml").read_text()
    assert f"trial {best.number}" in best_yaml.splitlines()[0]
    config = yaml.safe_load(best_yaml)
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == pytest.approx(
        best.params["model.optimizer.init_args.lr"]
    )
    assert "TrialPruning" not in best_yaml and config["trainer"]["limit_test_batches"] == 2  # TINY's, not 0
    # Run as written, with no W&B mode or account: offline by default.
    plain = {k: v for k, v in env.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    fit = run_program(
        run_entry_point, ["--config", str(out / "best.yaml"), "--run_dir", str(tmp_path / "best_run")],
        tmp_path, plain,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stdout + fit.stderr
    assert len(list((tmp_path / "best_run" / "wandb").glob("offline-run-*"))) == 1
    rerun = json.loads((tmp_path / "best_run" / "stats" / "metrics.json").read_text())
    assert rerun["test"]["test/acc"] is not None  # best.yaml is a normal config: it trains and tests
    assert best_val_acc(tmp_path / "best_run") == pytest.approx(best.value, abs=1e-6)  # same seed, same run

    # Continuing the study: its bookkeeping, with a stub fit (a finished run directory, no training).
    monkeypatch.setattr(lightning_gaaf.run, "fit_and_test", stub_fit)
    first_mtimes = [
        (Path(t.user_attrs["run_dir"]) / "stats" / "metrics.json").stat().st_mtime_ns for t in trials
    ]
    proc = tune_in_process(*[a if a != "3" else "5" for a in args], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3/5 trials done" in proc.stdout
    again = trials_of(storage, "mnist_base")
    check_no_trial_lost_or_duplicated(again, 5)
    assert [t.params for t in again[:3]] == [t.params for t in trials]
    assert [t.value for t in again[3:]] == [
        pytest.approx(stub_val_acc(t.params["model.optimizer.init_args.lr"]) - 0.1) for t in again[3:]
    ]
    assert [
        (Path(t.user_attrs["run_dir"]) / "stats" / "metrics.json").stat().st_mtime_ns for t in trials
    ] == first_mtimes
    assert json.loads((out / "study.json").read_text())["trials"] == {"complete": 5}

    proc = tune_in_process(
        *args, "--trainer.max_epochs", "2", cwd=tmp_path, env=env
    )  # other gaaf-fit arguments
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "was started with other settings (fit_args:" in proc.stderr


def test_two_local_workers_share_the_journal(tmp_path, data_dir):
    out = tmp_path / "study"
    parent = subprocess.Popen(
        tune_command(BASE, "--trials", "4", "--workers", "2", "--out", str(out), "--pruner", "none", "--", *TINY),
        cwd=tmp_path, env=fit_env(data_dir, WANDB_MODE="disabled"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output = parent.communicate(timeout=900)[0]
    assert parent.returncode == 0, output
    trials = trials_of(str(out / "study.journal"), "mnist_base")
    check_no_trial_lost_or_duplicated(trials, 4)
    assert parent.pid not in {t.user_attrs["pid"] for t in trials}  # the worker processes ran them
    assert sorted(p.name for p in (out / "trials").iterdir() if p.is_dir()) == [
        f"trial_{i:04d}" for i in range(4)
    ]


def test_pruning_stops_a_trial_early(tmp_path, data_dir):
    out = tmp_path / "study"
    # No model reaches val/acc 1.01: the threshold pruner stops the trial after its first validation.
    proc = tune_in_process(
        BASE, "--trials", "1", "--out", str(out), "--pruner", "threshold:1.01",
        "--", *TINY, "--trainer.max_epochs", "3",
        cwd=tmp_path, env=fit_env(data_dir, WANDB_MODE="disabled"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (trial,) = trials_of(str(out / "study.journal"), "mnist_base")
    assert trial.state == optuna.trial.TrialState.PRUNED
    run_dir = Path(trial.user_attrs["run_dir"])
    epochs = json.loads((run_dir / "stats" / "metrics.json").read_text())["epochs"]
    assert len(epochs) == 1 == trial.user_attrs["epochs_trained"]  # 1 of 3 epochs
    assert trial.intermediate_values == {0: pytest.approx(epochs[0]["val/acc"])}
    assert not (run_dir / "pruned.json").exists()  # the result said so: nothing read back from files
    assert "trial 0 pruned" in proc.stdout

    # The same pruner after the last epoch: the trial used its whole budget, so it is complete.
    proc = tune_in_process(
        BASE, "--trials", "1", "--out", str(tmp_path / "full"), "--pruner", "threshold:1.01", "--", *TINY,
        cwd=tmp_path, env=fit_env(data_dir, WANDB_MODE="disabled"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (trial,) = trials_of(str(tmp_path / "full" / "study.journal"), "mnist_base")
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.user_attrs["epochs_trained"] == 1


def test_sigterm_fails_the_running_trial_and_stops_the_worker(tmp_path, data_dir):
    """Lightning turns SIGTERM into an exception inside fit; the worker must stop, not start the next trial."""
    out = tmp_path / "study"
    proc = subprocess.Popen(
        tune_command(BASE, "--trials", "3", "--out", str(out), "--pruner", "none", "--", *TINY,
                     "--trainer.max_epochs", "100000"),
        cwd=tmp_path, env=fit_env(data_dir, WANDB_MODE="disabled"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    metrics = out / "trials" / "trial_0000" / "stats" / "metrics.json"
    deadline = time.monotonic() + 600
    while not metrics.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert metrics.is_file(), proc.communicate()[0] if proc.poll() is not None else "no epoch finished"
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    (trial,) = trials_of(str(out / "study.journal"), "mnist_base")
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["error"] == f"interrupted by signal {int(signal.SIGTERM)}"


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    from lightning_gaaf.cli.tune import main as tune

    cases = [
        (["no_such_config"], "config 'no_such_config': no such file"),
        ([str(CONFIGS / "svhn_base.yaml")], "no search space for svhn_base.yaml"),
        ([BASE, "--pruner", "sometimes"], "pruner 'sometimes'"),
        ([BASE, "--trials", "0"], "--trials and --workers must be >= 1"),
        ([BASE, "--storage", "postgresql+nodriver://u@h/db"], "storage 'h/db': not a usable database URL"),
        ([BASE, "--storage", "mysql://u@h/db"], "storage 'h/db': the database driver is not installed"),
        ([BASE, "--storage", "foo://u@h/db"], "storage 'h/db'"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            tune.main([*args, "--out", str(tmp_path / "x" / "study")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("gaaf-tune: error: ") and message in err and len(err.splitlines()) == 1
        assert not (tmp_path / "x").exists()  # a study that could not start leaves no folder behind


# --------------------------------------------------------------------------- PostgreSQL
def _postgres_bin() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A PostgreSQL server of its own (initdb + pg_ctl in a temporary folder, a free port); its URL."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed: apt-get install postgresql")
    pytest.importorskip(
        "psycopg", reason="the psycopg driver (pip install psycopg[binary]) is needed for postgresql:// URLs"
    )
    run_as: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="gaaf-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if user is None or shutil.which("runuser") is None:
            pytest.skip("running as root without a postgres/nobody user and runuser to start PostgreSQL")
        run_as = ["runuser", "-u", user, "--"]
        os.chmod(root, 0o755)
        shutil.chown(root, user=user)
    data, port = root / "data", _free_port()
    try:
        subprocess.run(
            [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "gaaf", "--auth=trust", "-E", "UTF8"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        yield f"postgresql+psycopg://gaaf@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True, timeout=120,
            )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_two_processes_on_one_postgresql_study(tmp_path, data_dir, postgres_url):
    """Two gaaf-tune processes (as on two machines) work on one study in a PostgreSQL database."""
    out = tmp_path / "study"
    args = [BASE, "--trials", "4", "--storage", postgres_url, "--out", str(out), "--pruner", "median:1:0"]
    env = fit_env(data_dir, WANDB_MODE="disabled")
    procs = [
        subprocess.Popen(tune_command(*args, "--", *TINY), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]  # fmt: skip
    deadline = time.monotonic() + 900
    outputs = [p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    assert not (out / "study.journal").exists()  # the study lives in the database only
    trials = optuna.load_study(study_name="mnist_base", storage=postgres_url).get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert all(t.state in finished for t in trials), [t.state for t in trials]
    assert len({t.user_attrs["run_dir"] for t in trials}) == 4
    assert {t.user_attrs["pid"] for t in trials} <= {p.pid for p in procs}
    for t in trials:
        assert t.value == pytest.approx(best_val_acc(Path(t.user_attrs["run_dir"])))
