"""GradScaleMonitor warns once, naming layers and remedies, when GAAF explodes a deep network."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from _monitor_helpers import TinyData, TinyModule, trainer
from torch import nn

from lightning_gaaf import apply_gaaf
from lightning_gaaf.callbacks import GradScaleMonitor
from lightning_gaaf.models import MLP
from lightning_gaaf.stats import read_stats


def deep_stack(depth: int = 10, act=nn.ReLU, width: int = 32, dim: int = 6) -> nn.Sequential:
    """``depth`` x (Linear, BatchNorm1d, act), then a Linear head (about VGG's depth for 10)."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(dim if i == 0 else width, width), nn.BatchNorm1d(width), act()]
    layers.append(nn.Linear(width, 3))
    return nn.Sequential(*layers)


def fit(tmp_path, backbone, steps=6, dim=6, classes=3, lr=0.05, module=TinyModule, n_train=128):
    monitor = GradScaleMonitor(log_every_n_steps=1)
    data = TinyData(batch_size=16, n_train=n_train, dim=dim, classes=classes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [monitor], max_steps=steps, max_epochs=-1).fit(
            module(backbone, lr=lr), datamodule=data
        )
    messages = [str(w.message) for w in caught if "GradScaleMonitor" in str(w.message)]
    return monitor, messages


@pytest.mark.parametrize("act", [nn.ReLU, nn.SiLU])
def test_fires_once_on_a_deep_gaaf_network_naming_layers_and_remedies(tmp_path, act):
    torch.manual_seed(0)
    backbone = deep_stack(10, act)
    apply_gaaf(backbone)
    monitor, messages = fit(tmp_path, backbone)
    assert len(messages) == 1  # once, although every step is checked
    (message,) = messages
    assert message.startswith("GradScaleMonitor at step 0: gradients explode towards the input")
    assert "mean |dE/dW| of backbone.0 (" in message
    assert "more than 100x that of the last layer backbone.30" in message
    for remedy in ("smaller shape", "larger K", "include/exclude", "policy"):
        assert remedy in message
    assert (
        "learning rate" not in message
    )  # at the first step no update has been made: the architecture did it
    assert monitor.steps == list(range(6))
    first = monitor.history["backbone.0"][0]
    assert first > 100 and monitor.history["backbone.30"][0] == 1.0
    saved = read_stats(tmp_path / "stats" / "grad_scale.json")
    assert saved["warnings"] == [{"step": 0, "message": message}]
    assert saved["reference"] == "backbone.30" and saved["factor"] == 100.0


@pytest.mark.parametrize("act", [nn.ReLU, nn.SiLU])
def test_silent_on_the_same_plain_network(tmp_path, act):
    torch.manual_seed(0)
    monitor, messages = fit(tmp_path, deep_stack(10, act))
    assert messages == [] and monitor.warnings == []
    assert 0.01 < monitor.history["backbone.0"][0] < 100


@pytest.mark.parametrize("gaaf", [False, True], ids=["plain", "gaaf"])
def test_silent_on_the_paper_mlp(tmp_path, gaaf):
    torch.manual_seed(0)
    backbone = MLP()  # 784-512-256-256-10, tanh
    if gaaf:
        apply_gaaf(backbone)
    monitor, messages = fit(tmp_path, backbone, steps=30, dim=784, classes=10)
    assert messages == []
    assert set(monitor.history) == {"backbone.fc1", "backbone.fc2", "backbone.fc3", "backbone.out"}
    assert all(math.isfinite(v) for values in monitor.history.values() for v in values)


class Growing(TinyModule):
    """The loss is scaled by 9^step: every layer's gradient grows 9x per step, the depth ratios stay."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) * 9.0**self.global_step


class Diverging(TinyModule):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * math.inf if self.global_step == 2 else loss


def test_growth_over_steps_and_non_finite_gradients_are_named(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    # One batch per epoch and lr=0: the same gradients every step, times 9^step.
    monitor, messages = fit(tmp_path / "grow", net, steps=5, lr=0.0, module=Growing, n_train=16)
    assert len(messages) == 1
    assert messages[0].startswith("GradScaleMonitor at step 3: gradients grew more than 100x since step 0")
    assert "backbone.0 (729x)" in messages[0] and "backbone.2 (729x)" in messages[0]
    assert "normalisation" in messages[0] and "GAAF" not in messages[0]  # no GAAF: plain remedies
    assert "a learning rate too large for this model is a likely cause" in messages[0]
    assert "(lr 0)" in messages[0]

    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    monitor, messages = fit(tmp_path / "nan", net, steps=3, lr=0.0, module=Diverging)
    assert len(messages) == 1
    assert messages[0].startswith(
        "GradScaleMonitor at step 2: non-finite gradients in backbone.0, backbone.2"
    )
    assert "learning rate too large" in messages[0] and "GAAF" not in messages[0]


def test_growth_in_a_gaaf_network_names_the_learning_rate_first(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    apply_gaaf(net)
    monitor, messages = fit(tmp_path, net, steps=5, lr=0.0, module=Growing, n_train=16)
    (message,) = messages
    assert message.startswith("GradScaleMonitor at step 3: gradients grew more than 100x since step 0")
    lr_at = message.index("a learning rate too large for this model is a likely cause")
    assert "(lr 0)" in message and lr_at < message.index("GAAF multiplies the backward signal")
