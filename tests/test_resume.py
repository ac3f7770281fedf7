"""Interrupted and resumed gaaf-fit runs end exactly where uninterrupted ones do.

Real processes, real signals: a fit is parked after a chosen training step (``PauseAtStep``), gets
SIGTERM or SIGINT from this process, must exit 143 / 130 with a ``last.ckpt`` of that moment, its
``stats/`` and a W&B run closed as failed; ``--ckpt_path last`` then continues it in the same run
directory and W&B run, and the final weights, epoch metrics and monitor statistics must equal those of
an uninterrupted run of the same config and seed, bit for bit (tolerance 0, CPU), also under 2-process
CPU DDP. Only the interrupted fits and the DDP launches need a process of their own: the uninterrupted
reference is the session's shared run and the resumed single-process fits run in this process.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from _cli_helpers import CONFIGS, fit_command, fit_env, run_fit, tiny
from _cli_runs import DDP, DDP_ARGS, DDPRun
from _fit_helpers import FitResult, fit_in_process
from _logged_fit import leet_inspect
from _resume_helpers import pause_at, wait_until_paused
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lightning_gaaf.cli.fit import main
from lightning_gaaf.datamodules import EpochSampler, ResumableDataLoader
from lightning_gaaf.run.resume import resolve_checkpoint, run_dir_of_checkpoint
from lightning_gaaf.run.signals import StopSignals, exit_code

HERE = Path(__file__).resolve().parent
STEPS_PER_EPOCH = 6
EPOCHS = 3
#: 3 epochs of 6 steps; the monitors log every 2 steps.
ARGS = ["--config", str(CONFIGS / "mnist_gaaf.yaml"), *tiny(EPOCHS, STEPS_PER_EPOCH)]
EXACT = {
    "weights": 0.0, "metrics": 0.0, "grad_info.json": 0.0, "saturation.json": 0.0, "grad_scale.json": 0.0, "wandb": 0.0
}  # fmt: skip
STATS = ("metrics.json", "grad_info.json", "saturation.json", "grad_scale.json")
#: What a mid-epoch resume does not reproduce (see the test): Lightning does not run the epoch-start
#: hooks again, so LearningRateMonitor(logging_interval="epoch") logs no learning rate for that epoch.
MID_EPOCH_GAPS = ("lr-SGD",)
#: Keys compared in the W&B history, by global step.
WANDB_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/acc", "test/loss")


def _env(data: Path, **extra: str) -> dict[str, str]:
    env = fit_env(data, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    return env


def _run_dir(cwd: Path) -> Path:
    runs = sorted((cwd / "runs" / "mnist_gaaf").iterdir())
    assert [p.name for p in runs] == ["version_0"], runs
    return runs[0]


def _fit(cwd: Path, data: Path, *args: str) -> FitResult:
    """``gaaf-fit ARGS`` in this process with W&B on (the tests compare the W&B history)."""
    return fit_in_process(*args, cwd=cwd, env=_env(data), wandb=True)


@pytest.fixture
def reference(reference_run: Any) -> Path:
    """Run directory of the uninterrupted single-process fit: the session's shared ``reference_run``,
    the same experiment, epochs, steps and seed as ``ARGS`` (it adds three loggers that W&B ignores)."""
    assert reference_run.args[2:] == ARGS[2:]
    return reference_run.run_dir


@dataclass
class Interrupted:
    returncode: int
    stdout: str
    stderr: str


def _interrupt(
    cwd: Path, data: Path, step: int, signum: int, *extra: str, env: dict[str, str] | None = None
) -> Interrupted:
    """Start gaaf-fit, wait until it has finished training step ``step``, send ``signum`` to it."""
    pause, marker = pause_at(cwd, step)
    proc = subprocess.Popen(
        fit_command(*ARGS, *extra, *pause),
        cwd=cwd,
        env=_env(data, **(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until_paused(proc, marker, step)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    return Interrupted(proc.returncode, out, err)


def _ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def _stats(run_dir: Path, name: str) -> dict[str, Any]:
    data = json.loads((run_dir / "stats" / name).read_text())
    data.pop("partial", None)
    return data


def _wandb_runs(run_dir: Path) -> list[list[dict[str, Any]]]:
    """Records of every offline W&B run under ``run_dir/wandb``, oldest first."""
    return [
        [json.loads(line) for line in leet_inspect(offline).splitlines() if line.strip()]
        for offline in sorted((run_dir / "wandb").glob("offline-run-*"))
    ]


def _run_id(records: list[dict[str, Any]]) -> str:
    return next(r["run"]["run_id"] for r in records if r.get("type") == "run")


def _exit_code(records: list[dict[str, Any]]) -> int | None:
    exits = [r["exit"].get("exit_code", 0) for r in records if r.get("type") == "exit"]
    return exits[-1] if exits else None


def differences(
    resumed: Path,
    reference: Path,
    ignore: tuple[str, ...] = (),
    wandb_ignore: tuple[str, ...] = (),
) -> dict[str, float]:
    """Max abs differences between two finished runs: weights (last.ckpt), metrics, monitor statistics.

    ``metrics`` covers every key of every epoch record of ``stats/metrics.json`` (a key missing on one
    side fails) except ``ignore``, and the test metrics; ``wandb`` the W&B history of ``WANDB_KEYS``
    except ``wandb_ignore``, step by step.
    """
    a, b = _ckpt(resumed / "checkpoints" / "last.ckpt"), _ckpt(reference / "checkpoints" / "last.ckpt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    out = {
        "weights": max((a["state_dict"][k] - b["state_dict"][k]).abs().max().item() for k in a["state_dict"])
    }
    ma, mb = _stats(resumed, "metrics.json"), _stats(reference, "metrics.json")
    records = [*zip(ma["epochs"], mb["epochs"], strict=True), (ma["test"], mb["test"])]
    out["metrics"] = 0.0
    for ra, rb in records:
        for key in (set(ra) | set(rb)) - set(ignore):
            assert key in ra and key in rb, (key, ra, rb)
            out["metrics"] = max(out["metrics"], abs(ra[key] - rb[key]))
    for name in STATS[1:]:
        sa, sb = _stats(resumed, name), _stats(reference, name)
        assert sa["steps"] == sb["steps"], name
        out[name] = _max_diff(sa, sb)
    wa, wb = _wandb_series(resumed), _wandb_series(reference)
    keys = set(WANDB_KEYS) - set(wandb_ignore)
    assert {k: sorted(v) for k, v in wa.items() if k in keys} == {
        k: sorted(v) for k, v in wb.items() if k in keys
    }
    out["wandb"] = max(abs(wa[k][step] - wb[k][step]) for k in keys for step in wb[k])
    return out


def _wandb_series(run_dir: Path) -> dict[str, dict[int, float]]:
    """W&B history values by key and global step, over all offline runs (a resumed part overrides)."""
    series: dict[str, dict[int, float]] = {}
    for records in _wandb_runs(run_dir):
        for record in records:
            if record.get("type") == "history":
                item = record["history"]["item"]
                for key in WANDB_KEYS:
                    if key in item:
                        series.setdefault(key, {})[int(item["trainer/global_step"])] = item[key]
    return series


def _max_diff(a: Any, b: Any) -> float:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return max((_max_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list):
        assert len(a) == len(b)
        return max((_max_diff(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b)
    assert a == b
    return 0.0


# ----------------------------------------------------------------------------- single process
def test_last_ckpt_is_the_final_state_whatever_the_top_k(reference: Path) -> None:
    """val/acc peaks early in this run: the top-1 checkpoint stays at an early epoch, last.ckpt moves on."""
    last = _ckpt(reference / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (EPOCHS - 1, EPOCHS * STEPS_PER_EPOCH)
    best_state = next(v for k, v in last["callbacks"].items() if k.startswith("BestCheckpoint"))
    best = Path(best_state["best_model_path"])
    assert best.parent == reference / "checkpoints" and best.is_file()
    assert _ckpt(best)["global_step"] < last["global_step"]
    assert sorted(p.name for p in best.parent.iterdir()) == sorted([best.name, "last.ckpt"])
    # Resolution of --ckpt_path against the run.
    assert resolve_checkpoint("last", reference, Path("unused")) == (best.parent / "last.ckpt", reference)
    assert resolve_checkpoint("best", reference, Path("unused")) == (best, reference)
    assert resolve_checkpoint(str(best), None, Path("unused")) == (best, reference)
    assert run_dir_of_checkpoint(best) == reference


def test_sigterm_mid_epoch_then_resume_equals_uninterrupted(
    tmp_path: Path, mnist_dir: Path, reference: Path
) -> None:
    step = STEPS_PER_EPOCH + 2  # third batch of the second epoch
    stopped = _interrupt(tmp_path, mnist_dir, step, signal.SIGTERM)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    run_dir = _run_dir(tmp_path)
    (message,) = [line for line in stopped.stderr.splitlines() if line.startswith("gaaf-fit: interrupted")]
    assert message.startswith(
        "gaaf-fit: interrupted by SIGTERM (exit 143); continue with: gaaf-fit --config "
    )
    command = message.split("continue with: ", 1)[1]
    last = _ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (1, step)  # the moment of the signal, not the epoch end
    # The monitors' files exist with what was recorded before the signal.
    metrics = _stats(run_dir, "metrics.json")
    assert [r["epoch"] for r in metrics["epochs"]] == [1]
    # (grad_info.json and saturation.json are written at the end of training so far.)
    (wandb_run,) = _wandb_runs(run_dir)
    assert _exit_code(wandb_run) == 143
    assert any(r.get("type") == "preempting" for r in wandb_run)

    # The printed command, pasted as it is, continues the run: it names the installed console script,
    # whose main runs here on the rest of the line.
    program, *argv = shlex.split(command)
    assert program == "gaaf-fit" and shutil.which(program), command
    resumed = _fit(tmp_path, mnist_dir, *argv)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _run_dir(tmp_path) == run_dir  # no new version
    assert (
        f"Restoring states from the checkpoint path at {run_dir / 'checkpoints' / 'last.ckpt'}"
        in resumed.stderr
    )
    first, second = _wandb_runs(run_dir)
    assert _run_id(first) == _run_id(second)  # the same W&B run, resumed
    assert _exit_code(second) == 0
    # The resumed run's config.yaml describes the experiment only: re-run, it is a new run (new W&B run).
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["trainer"]["logger"]["init_args"]["id"] is None and saved["ckpt_path"] is None

    # Lightning does not run the epoch-start hooks again when a fit resumes mid-epoch: the learning
    # rate (LearningRateMonitor, logging_interval=epoch) is not logged for that epoch. The training
    # accuracy of that epoch is exact: ImageClassifier's counters are in the checkpoint.
    diff = differences(run_dir, reference, ignore=MID_EPOCH_GAPS)
    print("single process, SIGTERM at step", step, diff)
    assert diff == EXACT

    # Re-run as a new run (one epoch, before the pause step), it starts its own W&B run. (A process of
    # its own: a third W&B run in this process left its offline folder without its .wandb file.)
    again = run_fit("--config", str(run_dir / "config.yaml"), "--trainer.max_epochs", "1",
                    cwd=tmp_path, env=_env(mnist_dir), timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    (new_run,) = _wandb_runs(tmp_path / "runs" / "mnist_gaaf" / "version_1")
    assert _run_id(new_run) != _run_id(first)


def test_sigint_in_the_last_batch_of_an_epoch_continues_from_the_previous_epoch(
    tmp_path: Path, mnist_dir: Path, reference: Path
) -> None:
    """Stopped in an epoch's last batch, the run continues from the end of the epoch before, exactly."""
    stopped = _interrupt(tmp_path, mnist_dir, 2 * STEPS_PER_EPOCH, signal.SIGINT)  # last batch of epoch 2
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "interrupted by SIGINT (exit 130)" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    run_dir = _run_dir(tmp_path)
    last = _ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (0, STEPS_PER_EPOCH)
    (wandb_run,) = _wandb_runs(run_dir)
    assert _exit_code(wandb_run) == 130

    resumed = _fit(tmp_path, mnist_dir, *ARGS, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    diff = differences(run_dir, reference)
    print("single process, SIGINT in the last batch of epoch 2", diff)
    assert diff == EXACT


def test_resume_from_an_epoch_boundary_with_more_epochs_equals_uninterrupted(
    tmp_path: Path, mnist_dir: Path, reference: Path
) -> None:
    run_dir = tmp_path / "run"
    first = _fit(tmp_path, mnist_dir, *ARGS, "--trainer.max_epochs", "1", "--run_dir", str(run_dir))
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = _fit(tmp_path, mnist_dir, *ARGS, "--run_dir", str(run_dir), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The first part was a complete 1-epoch run: it also logged its own test metrics at step 6.
    diff = differences(run_dir, reference, wandb_ignore=("test/acc", "test/loss"))
    print("single process, resumed after epoch 1", diff)
    assert diff == EXACT


# ----------------------------------------------------------------------------- user errors
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("last", "ckpt_path: no run under runs/mnist_gaaf has checkpoints/last.ckpt"),
        ("missing.ckpt", "missing.ckpt is not a file (expected last, best or a path)"),
    ],
)
def test_ckpt_path_that_names_nothing_is_a_one_line_error(
    tmp_path: Path,
    mnist_dir: Path,
    value: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GAAF_DATA_DIR", str(mnist_dir))
    with pytest.raises(SystemExit) as exc:
        main([*ARGS, "--ckpt_path", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("gaaf-fit: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def _files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("fault", "extra", "message"),
    [
        ("truncated", [], "is not a readable checkpoint"),
        ("garbage", [], "is not a readable checkpoint (UnpicklingError"),
        (
            "none",
            ["--model.backbone.init_args.hidden", "[32, 16, 16]"],
            "does not fit the configured model: backbone.",
        ),
        ("none", ["--gaaf.K", "100"], "records other GAAF options than this command (gaaf.K 10000"),
    ],
)
def test_a_resume_that_cannot_start_is_one_line_and_changes_nothing(
    tmp_path: Path,
    mnist_dir: Path,
    reference: Path,
    fault: str,
    extra: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A corrupt checkpoint, one that no longer fits the model, or other GAAF options: exit 2, one line
    naming the file or the mismatch, and the run directory (config.yaml, checkpoints, stats) untouched."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    if fault == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif fault == "garbage":
        last.write_bytes(b"this is not a checkpoint\n")
    before = _files(run_dir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GAAF_DATA_DIR", str(mnist_dir))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with pytest.raises(SystemExit) as exc:
        main([*ARGS, *extra, "--ckpt_path", "last", "--run_dir", str(run_dir)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("gaaf-fit: error: ckpt_path: ") and err.count("\n") == 1, err
    assert message in err and ("config.yaml" in err or str(last) in err), err
    assert _files(run_dir) == before


# ----------------------------------------------------------------------------- signals
def test_stop_signals_outside_a_fit_behave_like_python_and_restore_the_handlers() -> None:
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    with StopSignals() as signals, pytest.raises(SystemExit) as exc:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at the next bytecode; never reached
    assert exc.value.code == 143 and signals.received == signal.SIGTERM
    with StopSignals() as signals, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    assert signals.received == signal.SIGINT
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_exit_codes_follow_the_signal() -> None:
    assert exit_code(SIGTERMException(), signal.SIGTERM) == 143
    assert exit_code(SIGTERMException(), signal.SIGINT) == 130  # Ctrl-C turned into a graceful stop
    assert exit_code(SIGTERMException(), None) == 143
    assert exit_code(SystemExit(1), signal.SIGINT) == 130  # Lightning's exit after KeyboardInterrupt
    assert exit_code(KeyboardInterrupt(), signal.SIGINT) == 130
    assert exit_code(SystemExit(2), None) is None  # a usage error stays what it is
    assert exit_code(RuntimeError("bug"), signal.SIGTERM) is None  # a bug keeps its traceback


# ----------------------------------------------------------------------------- the sampler
def test_training_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch() -> None:
    dataset = torch.utils.data.TensorDataset(torch.arange(50))

    def order(seed: int, epoch: int, replicas: int = 1, rank: int = 0) -> list[int]:
        sampler = EpochSampler(dataset, num_replicas=replicas, rank=rank, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    with torch.random.fork_rng():
        torch.manual_seed(123)
        a = order(7, 2)
        torch.manual_seed(456)  # the global RNG plays no part
        assert order(7, 2) == a
    assert sorted(a) == list(range(50))
    assert order(7, 3) != a and order(8, 2) != a
    shards = order(7, 2, 2, 0) + order(7, 2, 2, 1)
    assert sorted(shards) == list(range(50))

    loader = ResumableDataLoader(dataset, sampler=EpochSampler(dataset, seed=7), batch_size=8)
    loader.sampler.set_epoch(2)
    batches = [b[0].tolist() for b in loader]
    assert sum(batches, []) == a
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state == {"epoch": 2, "seed": 7, "batches": 2}

    fresh = ResumableDataLoader(dataset, sampler=EpochSampler(dataset, seed=7), batch_size=8)
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(2)
    assert [b[0].tolist() for b in fresh] == batches[2:]
    assert fresh.state_dict()["batches"] == len(batches)
    assert [b[0].tolist() for b in fresh] == batches  # the skip applies to one iteration only

    other = ResumableDataLoader(dataset, sampler=EpochSampler(dataset, seed=8), batch_size=8)
    with pytest.raises(ValueError, match="training order has seed 7, this loader's has 8"):
        other.load_state_dict(state)


# ----------------------------------------------------------------------------- DDP
@pytest.mark.xdist_group("ddp")
def test_ddp_sigterm_to_rank_zero_then_resume_equals_uninterrupted(
    tmp_path: Path, mnist_dir: Path, ddp_run: DDPRun
) -> None:
    """Every part is a DDP launch (a process of its own). The uninterrupted reference is the session's
    DDP run (the same experiment, native kernels): the interrupted fit uses its kernel cache."""
    assert ddp_run.result.returncode == 0, ddp_run.result.stderr[-3000:]
    assert DDP_ARGS == [*ARGS, *DDP]
    env = {"GAAF_BACKEND": "native", "GAAF_CACHE_DIR": str(ddp_run.cache)}
    step = STEPS_PER_EPOCH + 2
    stopped = _interrupt(tmp_path, mnist_dir, step, signal.SIGTERM, *DDP, env=env)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    run_dir = _run_dir(tmp_path)
    assert _ckpt(run_dir / "checkpoints" / "last.ckpt")["global_step"] == step
    (wandb_run,) = _wandb_runs(run_dir)
    assert _exit_code(wandb_run) == 143

    resumed = run_fit(
        *ARGS, *DDP, "--ckpt_path", "last", cwd=tmp_path, env=_env(mnist_dir, **env), timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _run_dir(tmp_path) == run_dir
    first, second = _wandb_runs(run_dir)
    assert _run_id(first) == _run_id(second)
    # every rank's accuracy counters
    diff = differences(run_dir, ddp_run.run_dir, ignore=MID_EPOCH_GAPS)
    print("DDP 2 processes, SIGTERM at step", step, diff)
    assert diff == EXACT
