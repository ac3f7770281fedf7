"""Each entry point imports only what it uses: plain PyTorch users get no Lightning, gaaf-report no torch.

The tests assert the import graph (which modules a fresh interpreter loads), never a time;
``benchmarks/imports.py`` measures the times.
"""

from __future__ import annotations

import importlib.util
import textwrap

import pytest
from _import_helpers import imported_modules

import lightning_gaaf
from lightning_gaaf.stats import write_stats

#: What ``from lightning_gaaf import GAAF, apply_gaaf, strip_gaaf`` must not load.
TRAINING_STACK = {
    "pytorch_lightning",
    "lightning",
    "lightning_fabric",
    "torchmetrics",
    "wandb",
    "matplotlib",
    "optuna",
    "jsonargparse",
}


def test_plain_pytorch_users_get_gaaf_without_lightning():
    code = textwrap.dedent(
        """
        import torch
        from torch import nn

        import lightning_gaaf
        from lightning_gaaf import GAAF, apply_gaaf, gaaf, register_activation, set_backend, strip_gaaf

        model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
        report = apply_gaaf(model)
        assert sorted(report) == ["1"] and isinstance(model[1], GAAF), report
        x = torch.randn(3, 4)
        assert model(x).shape == (3, 2)
        assert torch.allclose(gaaf(x, "tanh"), torch.tanh(x), atol=0.5e-4)
        strip_gaaf(model)
        assert type(model[1]) is nn.Tanh
        """
    )
    modules = imported_modules(["-c", code])
    assert "torch" in modules and "lightning_gaaf" in modules
    assert modules.isdisjoint(TRAINING_STACK), sorted(modules & TRAINING_STACK)


def test_gaaf_callback_is_loaded_with_lightning_on_first_access():
    code = textwrap.dedent(
        """
        import sys

        import lightning_gaaf

        assert "pytorch_lightning" not in sys.modules and "torch" not in sys.modules
        callback = lightning_gaaf.GAAFCallback
        import pytorch_lightning as pl

        from lightning_gaaf import GAAFCallback

        assert GAAFCallback is callback and issubclass(callback, pl.Callback)
        assert isinstance(callback(K=100), pl.Callback)
        """
    )
    assert "pytorch_lightning" in imported_modules(["-c", code])


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="module 'lightning_gaaf' has no attribute 'set_compile'"):
        lightning_gaaf.set_compile  # noqa: B018
    assert set(lightning_gaaf.__all__) <= set(dir(lightning_gaaf))


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
def test_surgery_never_imports_foreign_activation_modules():
    """``transformers`` is a lazy package: its activation classes are looked up, never imported."""
    code = textwrap.dedent(
        """
        import sys

        import transformers
        from torch import nn

        from lightning_gaaf import apply_gaaf

        assert "transformers.activations" not in sys.modules
        report = apply_gaaf(nn.Sequential(nn.GELU(), nn.Tanh()))
        assert report.count == 2, report
        assert "transformers.activations" not in sys.modules, "surgery imported transformers.activations"
        """
    )
    imported_modules(["-c", code])


def test_report_help_imports_neither_torch_nor_lightning():
    modules = imported_modules(["gaaf-report", "--help"])
    assert "lightning_gaaf" in modules
    assert modules.isdisjoint({"torch", *TRAINING_STACK}), sorted(modules & {"torch", *TRAINING_STACK})


def test_report_of_a_run_imports_neither_torch_nor_lightning(tmp_path):
    run_dir = tmp_path / "run"
    epochs = [
        {"epoch": e, "step": 2 * e + 1, "train/loss": 1.0 / (e + 1), "val/acc": 0.5 + e / 10}
        for e in range(3)
    ]
    write_stats(run_dir / "stats", "metrics", {"epochs": epochs, "test": {"test/acc": 0.7}})
    out = tmp_path / "figures"
    modules = imported_modules(["gaaf-report", str(run_dir), "--out", str(out)])
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "matplotlib" in modules
    heavy = {"torch", "pytorch_lightning", "lightning", "torchmetrics", "wandb"}
    assert modules.isdisjoint(heavy), sorted(modules & heavy)


def test_a_bad_report_argument_fails_before_matplotlib(tmp_path):
    modules = imported_modules(
        ["gaaf-report", str(tmp_path / "missing"), "--out", str(tmp_path)], returncode=2
    )
    assert modules.isdisjoint({"torch", "matplotlib"})
