"""Monitor callbacks against values computed independently (numpy / autograd) on tiny models."""

from __future__ import annotations

import copy
import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _monitor_helpers import TinyData, TinyModule, mlp, trainer
from pytorch_lightning.loggers import CSVLogger
from torch import nn

from lightning_gaaf import GAAF, apply_gaaf
from lightning_gaaf.callbacks import (
    GradInfoMonitor,
    GradScaleMonitor,
    NetVarMonitor,
    NodeCorrelationMonitor,
    SaturationMonitor,
    WeightHistMonitor,
    saturation_intervals,
)
from lightning_gaaf.stats import SCHEMA_VERSION, read_stats

Z_TANH = math.atanh(math.sqrt(0.9))  # tanh'(z*) = 0.1 * tanh'(0)


def known_net(act2=lambda: nn.ReLU(inplace=True)) -> nn.Sequential:
    """3 -> 4 (tanh) -> 5 (act2) -> 2 with fixed, spread-out weights."""
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5), act2(), nn.Linear(5, 2))
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.copy_(torch.linspace(-1.5, 1.2, p.numel()).reshape(p.shape).roll(i) * (1 + 0.25 * i))
    return net


def params(net: nn.Sequential) -> list[np.ndarray]:
    return [p.detach().double().numpy() for p in net.parameters()]


def nets_by_hand(net: nn.Sequential, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Pre-activations of the two hidden layers of :func:`known_net`, in float64 numpy."""
    w0, b0, w1, b1, *_ = params(net)
    xs = x.double().numpy()
    z1 = xs @ w0.T + b0
    z2 = np.tanh(z1) @ w1.T + b1
    return z1, z2


def expected_stats(z: np.ndarray, saturated: np.ndarray, edges: np.ndarray) -> dict:
    z = z.ravel()
    lo, hi = edges[0], edges[-1]
    inside = z[(z >= lo) & (z <= hi)]
    return {
        "count": z.size,
        "saturation": saturated.mean(),
        "mean": z.mean(),
        "std": z.std(),
        "below": int((z < lo).sum()),
        "above": int((z > hi).sum()),
        "hist": np.histogram(inside, bins=edges)[0].tolist(),
    }


def assert_stats(got: dict, want: dict) -> None:
    assert got["count"] == want["count"]
    assert got["saturation"] == pytest.approx(want["saturation"], abs=1e-12)
    assert got["mean"] == pytest.approx(want["mean"], rel=1e-5, abs=1e-6)
    assert got["std"] == pytest.approx(want["std"], rel=1e-5)
    assert got["below"] == want["below"] and got["above"] == want["above"]
    assert got["hist"] == want["hist"]


def step_stats(monitor: SaturationMonitor, layer: str, index: int) -> dict:
    h = monitor.history[layer]
    return {k: h[k][index] for k in ("count", "saturation", "mean", "std", "below", "above", "hist")}


# ------------------------------------------------------------------------------------------------
# Saturation thresholds
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (nn.Tanh(), [(-math.inf, -Z_TANH), (Z_TANH, math.inf)]),
        (nn.Sigmoid(), [(-math.inf, -2 * Z_TANH), (2 * Z_TANH, math.inf)]),
        (nn.ReLU(inplace=True), [(-math.inf, 0.0)]),
        (nn.LeakyReLU(0.01), [(-math.inf, 0.0)]),
        (nn.LeakyReLU(0.2), []),
        (nn.ELU(), [(-math.inf, math.log(0.1))]),
        (nn.ELU(alpha=0.5), [(-math.inf, math.log(0.2))]),
        (nn.Softplus(), [(-math.inf, -math.log(9.0))]),
        (nn.Hardtanh(-2.0, 3.0), [(-math.inf, -2.0), (3.0, math.inf)]),
        (nn.ReLU6(), [(-math.inf, 0.0), (6.0, math.inf)]),
        (GAAF(nn.Tanh()), [(-math.inf, -Z_TANH), (Z_TANH, math.inf)]),
    ],
)
def test_saturation_intervals_match_closed_forms(module, expected):
    got = saturation_intervals(module)
    assert len(got) == len(expected)
    for (lo, hi), (elo, ehi) in zip(got, expected, strict=True):
        assert lo == pytest.approx(elo, abs=1e-6) and hi == pytest.approx(ehi, abs=1e-6)


@pytest.mark.parametrize("module", [nn.GELU(), nn.SiLU(), nn.GELU(approximate="tanh")])
def test_saturation_intervals_follow_the_derivative_rule(module):
    """Inside every interval |phi'| < 10 % of its maximum, just outside it is above."""
    z = torch.linspace(-8, 8, 16001, dtype=torch.float64, requires_grad=True)
    (d,) = torch.autograd.grad(module(z).sum(), z)
    d = d.abs()
    cut = 0.1 * d.max()
    intervals = saturation_intervals(module)
    inside = torch.zeros_like(d, dtype=torch.bool)
    for lo, hi in intervals:
        inside |= (z > lo) & (z < hi)
    near = torch.zeros_like(inside)
    for lo, hi in intervals:
        for b in (lo, hi):
            if math.isfinite(b):
                near |= (z - b).abs() < 1e-3
    assert intervals and inside.any()
    assert torch.equal((d < cut)[~near], inside[~near])


# ------------------------------------------------------------------------------------------------
# GradInfoMonitor
# ------------------------------------------------------------------------------------------------


def test_grad_info_equals_mean_abs_gradient_of_each_layer(tmp_path):
    torch.manual_seed(0)
    backbone = known_net()
    reference = copy.deepcopy(backbone)
    data = TinyData(dim=3, classes=2, batch_size=8, n_train=32)
    logger = CSVLogger(tmp_path, name="csv", version=0)
    monitor = GradInfoMonitor(log_every_n_steps=1)
    trainer(tmp_path, [monitor], max_steps=3, logger=logger).fit(
        TinyModule(backbone, lr=0.05), datamodule=data
    )

    # Same steps done independently: autograd on a copy, SGD by hand.
    want = {name: [] for name in ("backbone.0", "backbone.2", "backbone.4")}
    for step in range(3):
        x, y = data.x_train[8 * step : 8 * step + 8], data.y_train[8 * step : 8 * step + 8]
        reference.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        for i in (0, 2, 4):
            want[f"backbone.{i}"].append(reference[i].weight.grad.abs().mean().item())
        with torch.no_grad():
            for p in reference.parameters():
                p -= 0.05 * p.grad

    assert monitor.steps == [0, 1, 2]
    assert set(monitor.history) == set(want)
    for name, values in want.items():
        assert monitor.history[name] == pytest.approx(values, rel=1e-5)

    # With a CSV logger the run's files sit beside its metrics.csv (the trainer's log_dir).
    run = tmp_path / "csv" / "version_0"
    saved = json.loads((run / "stats" / "grad_info.json").read_text())
    assert saved["steps"] == [0, 1, 2]
    for name, values in want.items():
        assert saved["layers"][name] == pytest.approx(values, rel=1e-5)
        assert saved["summary"][name] == pytest.approx(np.mean(values), rel=1e-5)

    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("gaaf/grad_info/backbone.2")]
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert [float(r["gaaf/grad_info/backbone.2"]) for r in rows] == pytest.approx(
        want["backbone.2"], rel=1e-5
    )
    assert (run / "report" / "grad_info.png").is_file()
    assert not (tmp_path / "stats").exists()


@pytest.mark.parametrize(("every", "trainer_every", "steps"), [(2, 1, [1, 3]), (None, 3, [2])])
def test_grad_info_interval_follows_lightning_convention(tmp_path, every, trainer_every, steps):
    monitor = GradInfoMonitor(log_every_n_steps=every)
    trainer(tmp_path, [monitor], max_steps=5, log_every_n_steps=trainer_every).fit(
        TinyModule(mlp()), datamodule=TinyData()
    )
    assert monitor.steps == steps


# ------------------------------------------------------------------------------------------------
# SaturationMonitor
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gaaf", [False, True], ids=["plain", "gaaf"])
def test_saturation_stats_match_numpy_on_known_nets(tmp_path, gaaf):
    backbone = known_net()
    if gaaf:
        apply_gaaf(backbone)
        assert isinstance(backbone[1], GAAF) and isinstance(backbone[3], GAAF)
    data = TinyData(dim=3, classes=2, batch_size=16, n_train=32, scale=3.0, train_shift=0.5)
    monitor = SaturationMonitor(log_every_n_steps=1, bins=12, value_range=(-2.5, 2.5))
    model = TinyModule(backbone, lr=0.05)
    x0 = data.x_train[:16] * 3.0 + 0.5  # what the datamodule makes of training batches on the device
    z1, z2 = nets_by_hand(backbone, x0)  # step 0 runs with the initial weights
    fit = trainer(tmp_path, [monitor], max_steps=2)
    fit.fit(model, datamodule=data)
    assert data.test_setups == 0 and monitor.eval_stats is None  # fit alone reads no test data
    fit.test(model, datamodule=data)

    assert monitor.steps == [0, 1]
    assert set(monitor.history) == {"backbone.1", "backbone.3"}  # never the GAAF's inner .base
    edges = np.linspace(-2.5, 2.5, 13)
    want1 = expected_stats(z1, np.abs(z1) > Z_TANH, edges)
    want2 = expected_stats(z2, z2 < 0, edges)  # in-place ReLU: the hook must still see negatives
    assert want2["saturation"] > 0 and want1["saturation"] > 0 and want1["above"] + want1["below"] > 0
    assert_stats(step_stats(monitor, "backbone.1", 0), want1)
    assert_stats(step_stats(monitor, "backbone.3", 0), want2)

    # Lightning's test loop: the whole test set through the datamodule's transfer hooks (no
    # training shift), final weights, eval mode.
    assert data.test_setups == 1
    t1, t2 = nets_by_hand(backbone, data.x_test * 3.0)
    ev = monitor.eval_stats
    assert_stats(ev["backbone.1"], expected_stats(t1, np.abs(t1) > Z_TANH, edges))
    assert_stats(ev["backbone.3"], expected_stats(t2, t2 < 0, edges))

    saved = json.loads((tmp_path / "stats" / "saturation.json").read_text())
    assert saved["steps"] == [0, 1] and saved["edges"] == pytest.approx(edges.tolist())
    assert saved["eval"]["split"] == "test"
    assert saved["eval"]["layers"]["backbone.3"]["hist"] == ev["backbone.3"]["hist"]
    assert saved["thresholds"]["backbone.1"] == {
        "activation": "Tanh",
        "intervals": [[None, pytest.approx(-Z_TANH)], [pytest.approx(Z_TANH), None]],
    }
    assert saved["thresholds"]["backbone.3"] == {"activation": "ReLU", "intervals": [[None, 0.0]]}
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"saturation.png", "net_hist_test.png"}


def test_saturation_threshold_overrides_and_val_split(tmp_path):
    backbone = known_net()
    data = TinyData(dim=3, classes=2, batch_size=16, n_train=16)
    monitor = SaturationMonitor(
        log_every_n_steps=1, thresholds={"Tanh": 0.5, "backbone.3": (None, 0.25)}, split="val"
    )
    z1, z2 = nets_by_hand(backbone, data.x_train[:16])
    fit = trainer(tmp_path, [monitor], max_steps=1, limit_val_batches=None, num_sanity_val_steps=2)
    fit.fit(TinyModule(backbone), datamodule=data)
    assert monitor.history["backbone.1"]["saturation"][0] == pytest.approx((np.abs(z1) > 0.5).mean())
    assert monitor.history["backbone.3"]["saturation"][0] == pytest.approx((z2 > 0.25).mean())
    # Fit's validation loop (not the sanity check): val loader, 16 samples x 4 nodes, final weights.
    assert monitor.eval_stats["backbone.1"]["count"] == 16 * 4
    v1, _ = nets_by_hand(backbone, data.x_test[:16])
    assert monitor.eval_stats["backbone.1"]["saturation"] == pytest.approx((np.abs(v1) > 0.5).mean())
    assert fit.callback_metrics["gaaf/saturation_val/backbone.1"].item() == pytest.approx(
        (np.abs(v1) > 0.5).mean()
    )
    assert data.test_setups == 0
    assert (tmp_path / "report" / "net_hist_val.png").is_file()
    saved = json.loads((tmp_path / "stats" / "saturation.json").read_text())
    assert saved["eval"]["split"] == "val" and saved["eval"]["layers"]["backbone.1"]["count"] == 64


def test_hooks_only_on_logging_steps(tmp_path):
    seen: list[int] = []

    class Probe(TinyModule):
        def training_step(self, batch, batch_idx):
            acts = [m for m in self.modules() if isinstance(m, (nn.Tanh, nn.ReLU))]
            seen.append(sum(len(m._forward_pre_hooks) for m in acts))
            return super().training_step(batch, batch_idx)

    model = Probe(mlp(hidden=(8, 8), act=nn.ReLU, dropout=0.2))
    saturation = SaturationMonitor(log_every_n_steps=2)
    callbacks = [saturation, NetVarMonitor(log_every_n_steps=1, repeats=3), NodeCorrelationMonitor()]
    fit = trainer(tmp_path, callbacks, max_steps=5)
    fit.fit(model, datamodule=TinyData(batch_size=8))
    fit.test(model, datamodule=TinyData(batch_size=8))
    assert seen == [0, 2, 0, 2, 0]  # one pre-hook per activation on steps 1 and 3 only
    # NetVarMonitor's probe forwards on the same steps are not counted as training nets.
    assert saturation.history["backbone.1"]["count"] == [8 * 8, 8 * 8]
    leftovers = [m for m in model.modules() if m._forward_pre_hooks or m._forward_hooks]
    assert leftovers == []


def test_include_globs_select_modules_by_name(tmp_path):
    class Square(nn.Module):
        def forward(self, x):
            return x * x

    backbone = nn.Sequential(nn.Linear(6, 5), Square(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    monitor = SaturationMonitor(log_every_n_steps=1, include=["backbone.1"])
    trainer(tmp_path, [monitor], max_steps=1).fit(TinyModule(backbone), datamodule=TinyData())
    assert list(monitor.history) == ["backbone.1"]
    # x^2: derivative 2|z| is below 10 % of its maximum on the grid (40) for |z| < 2.
    assert monitor.stats()["thresholds"]["backbone.1"]["activation"] == "Square"
    assert monitor.stats()["thresholds"]["backbone.1"]["intervals"] == [pytest.approx([-2.0, 2.0], abs=1e-6)]


# ------------------------------------------------------------------------------------------------
# NetVarMonitor
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gaaf", [False, True], ids=["plain", "gaaf"])
def test_net_variance_zero_without_dropout_positive_after_dropout(tmp_path, gaaf):
    def model(dropout: float = 0.0) -> TinyModule:
        backbone = mlp(dropout=dropout)
        if gaaf:
            apply_gaaf(backbone)
        return TinyModule(backbone)

    plain = NetVarMonitor(log_every_n_steps=1, repeats=5)
    trainer(tmp_path / "a", [plain], max_steps=2).fit(model(), datamodule=TinyData())
    assert plain.steps == [0, 1]
    assert all(v == 0.0 for values in plain.history.values() for v in values)

    dropped = NetVarMonitor(log_every_n_steps=1, repeats=5)
    trainer(tmp_path / "b", [dropped], max_steps=2).fit(model(dropout=0.5), datamodule=TinyData())
    # mlp(dropout): Linear, Tanh, Dropout, Linear, Tanh, Dropout, Linear: the first net sees no dropout.
    assert dropped.history["backbone.1"] == [0.0, 0.0]
    assert all(v > 0 for v in dropped.history["backbone.4"])
    saved = json.loads((tmp_path / "b" / "stats" / "net_var.json").read_text())
    assert saved["layers"]["backbone.4"] == pytest.approx(dropped.history["backbone.4"])
    assert saved["repeats"] == 5


@pytest.mark.parametrize("max_samples", [None, 3])
def test_net_variance_matches_bernoulli_formula(tmp_path, max_samples):
    """Net after dropout p of activations a: Var = sum_j W_ij^2 a_j^2 p / (1 - p) per node."""
    torch.manual_seed(0)
    p = 0.3
    backbone = nn.Sequential(
        nn.Linear(6, 10), nn.Tanh(), nn.Dropout(p), nn.Linear(10, 7), nn.Tanh(), nn.Linear(7, 3)
    )
    data = TinyData(batch_size=8)
    w0, b0, w1 = (
        t.detach().double().numpy() for t in (backbone[0].weight, backbone[0].bias, backbone[3].weight)
    )
    a = np.tanh(data.x_train[:8].double().numpy() @ w0.T + b0)
    per_sample = ((a**2) @ (w1**2).T * p / (1 - p)).mean(1)
    expected = per_sample[:max_samples].mean()
    assert abs(per_sample[:3].mean() / per_sample.mean() - 1) > 0.3  # the two cases differ
    monitor = NetVarMonitor(log_every_n_steps=1, repeats=2000, max_samples=max_samples)
    trainer(tmp_path, [monitor], max_steps=1).fit(TinyModule(backbone), datamodule=data)
    assert monitor.history["backbone.4"][0] == pytest.approx(expected, rel=0.1)


def test_net_variance_leaves_training_bit_identical(tmp_path):
    def fit(callbacks):
        torch.manual_seed(3)
        backbone = nn.Sequential(
            nn.Linear(6, 8),
            nn.Tanh(),
            nn.Dropout(0.3),
            nn.Linear(8, 8),
            nn.BatchNorm1d(8),
            nn.Tanh(),
            nn.Linear(8, 3),
        )
        model = TinyModule(backbone)
        torch.manual_seed(7)
        trainer(tmp_path, callbacks, max_steps=5).fit(model, datamodule=TinyData())
        return model.state_dict()

    without = fit([])
    monitor = NetVarMonitor(log_every_n_steps=2, repeats=4)
    with_probe = fit([monitor])
    assert monitor.steps == [1, 3] and monitor.history["backbone.5"][0] > 0
    assert without.keys() == with_probe.keys()
    for key in without:  # weights and BatchNorm running statistics
        assert torch.equal(without[key], with_probe[key]), key


# ------------------------------------------------------------------------------------------------
# NodeCorrelationMonitor
# ------------------------------------------------------------------------------------------------


def test_node_correlation_counts_pairs_like_numpy_and_skips_dead_nodes(tmp_path):
    backbone = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 3))
    with torch.no_grad():
        backbone[0].weight[4] = 0.0
        backbone[0].bias[4] = -1.0  # node 4 never fires: dead
    data = TinyData(n_test=50)
    monitor = NodeCorrelationMonitor(thresholds=(0.9, 0.5, 0.1))
    fit = trainer(tmp_path, [monitor], max_steps=2)
    model = TinyModule(backbone, lr=0.0)
    fit.fit(model, datamodule=data)
    assert monitor.rows == [] and not (tmp_path / "stats" / "node_correlation.json").exists()
    fit.test(model, datamodule=data)

    w, b = backbone[0].weight.detach().double().numpy(), backbone[0].bias.detach().double().numpy()
    h = np.maximum(data.x_test.double().numpy() @ w.T + b, 0.0)
    live = h.std(0) > 0
    assert live.sum() == 8
    corr = np.abs(np.corrcoef(h[:, live], rowvar=False))[np.triu_indices(8, 1)]
    want = {t: int((corr > t).sum()) for t in (0.9, 0.5, 0.1)}
    assert 0 < want[0.5] < want[0.1]

    saved = read_stats(tmp_path / "stats" / "node_correlation.json")
    assert saved["schema_version"] == SCHEMA_VERSION and saved["partial"] is False
    rows = saved["rows"]
    assert list(rows[0]) == ["layer", "threshold", "pairs", "total_pairs", "nodes", "dead_nodes"]
    assert [(r["layer"], r["threshold"], r["pairs"]) for r in rows] == [
        ("backbone.1", t, want[t]) for t in (0.9, 0.5, 0.1)
    ]
    assert {(r["total_pairs"], r["nodes"], r["dead_nodes"]) for r in rows} == {(28, 9, 1)}
    assert fit.callback_metrics["gaaf/node_correlation_test_0.5/backbone.1"].item() == pytest.approx(
        want[0.5] / 28
    )
    assert (tmp_path / "report" / "node_correlation.png").is_file()


def test_node_correlation_uses_channel_means_for_conv_and_separates_shared_modules(tmp_path):
    class ConvNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 4, 3)
            self.act = nn.Tanh()  # used twice
            self.fc = nn.Linear(4, 5)
            self.head = nn.Linear(5, 3)

        def forward(self, x):
            h = self.act(self.conv(x.unsqueeze(1)))  # (B, 4, 4)
            return self.head(self.act(self.fc(h.mean(-1))))

    net = ConvNet()
    data = TinyData(n_test=30)
    monitor = NodeCorrelationMonitor(thresholds=(0.5,))
    fit = trainer(tmp_path, [monitor], max_steps=1)
    model = TinyModule(net, lr=0.0)
    fit.fit(model, datamodule=data)
    fit.test(model, datamodule=data)
    rows = {r["layer"]: r for r in monitor.rows}
    assert set(rows) == {"backbone.act", "backbone.act#2"}
    assert rows["backbone.act"]["nodes"] == 4 and rows["backbone.act#2"]["nodes"] == 5
    with torch.no_grad():
        means = net.act(net.conv(data.x_test.unsqueeze(1))).mean(-1).double().numpy()
    corr = np.abs(np.corrcoef(means, rowvar=False))[np.triu_indices(4, 1)]
    assert rows["backbone.act"]["pairs"] == int((corr > 0.5).sum())
    assert rows["backbone.act"]["total_pairs"] == 6


# ------------------------------------------------------------------------------------------------
# WeightHistMonitor, arguments
# ------------------------------------------------------------------------------------------------


def test_weight_histograms_at_start_and_end(tmp_path):
    backbone = mlp()
    start = backbone[0].weight.detach().clone().numpy()
    monitor = WeightHistMonitor(bins=10)
    trainer(tmp_path, [monitor], max_steps=3).fit(TinyModule(backbone), datamodule=TinyData())
    saved = json.loads((tmp_path / "stats" / "weight_hist.json").read_text())
    layer = saved["layers"]["backbone.0"]
    counts, edges = np.histogram(start, bins=10)
    assert layer["init"]["counts"] == counts.tolist() and layer["init"]["edges"] == pytest.approx(
        edges.tolist()
    )
    final = backbone[0].weight.detach().numpy()
    assert layer["final"]["counts"] == np.histogram(final, bins=10)[0].tolist()
    assert layer["final"]["mean"] == pytest.approx(final.mean()) and layer["final"]["numel"] == 48
    assert not np.array_equal(start, final)
    assert set(saved["layers"]) == {"backbone.0", "backbone.2", "backbone.4"}
    assert (tmp_path / "report" / "weight_hist.png").is_file()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: GradInfoMonitor(log_every_n_steps=0), "log_every_n_steps must be a positive integer"),
        (lambda: SaturationMonitor(bins=0), r"bins must be an integer in \[1, 512\]"),
        (lambda: SaturationMonitor(bins=1000), r"bins must be an integer in \[1, 512\]"),
        (lambda: SaturationMonitor(value_range=(1, -1)), "value_range must be finite with low < high"),
        (lambda: SaturationMonitor(split="train"), "split must be 'test' or 'val'"),
        (lambda: SaturationMonitor(include="backbone.*"), "include must be a list of name globs"),
        (lambda: SaturationMonitor(thresholds={"Tanh": "x"}), r"thresholds\['Tanh'\] must be a number"),
        (
            lambda: SaturationMonitor(thresholds={"backbone.1": (1, 2, 3)}),
            r"thresholds\['backbone.1'\] must be a",
        ),
        (lambda: NetVarMonitor(repeats=1), "repeats must be an integer >= 2"),
        (lambda: NetVarMonitor(log_every_n_steps=0), "log_every_n_steps must be a positive integer or None"),
        (lambda: GradScaleMonitor(factor=1), "factor must be a number > 1"),
        (lambda: NetVarMonitor(max_samples=0), "max_samples must be a positive integer or None"),
        (lambda: NodeCorrelationMonitor(thresholds=(1.5,)), r"thresholds must be numbers in \[0, 1\)"),
        (lambda: NodeCorrelationMonitor(split="train"), "split must be 'test' or 'val'"),
        (lambda: WeightHistMonitor(bins=0), "bins must be an integer"),
    ],
)
def test_argument_errors_name_the_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ------------------------------------------------------------------------------------------------
# The project's own model, datamodule and GAAF surgery
# ------------------------------------------------------------------------------------------------


def test_monitors_on_project_cnn_with_gaaf_callback(tmp_path):
    from _monitor_helpers import monitors

    from lightning_gaaf import GAAFCallback
    from lightning_gaaf.datamodules import MNISTDataModule
    from lightning_gaaf.datamodules.synthetic import write_mnist
    from lightning_gaaf.models import ImageClassifier, SmallCNN

    write_mnist(tmp_path / "data", n_train=64, n_test=24)
    data = MNISTDataModule(root=str(tmp_path / "data"), batch_size=16, val_size=16, download=False)
    backbone = SmallCNN(
        in_channels=1, input_size=28, conv_widths=(4, 4, 8, 8), fc_widths=(16, 8), dropout=0.2
    )
    model = ImageClassifier(backbone=backbone, num_classes=10)
    callbacks = monitors()
    fit = trainer(tmp_path / "run", [GAAFCallback(), *callbacks], max_steps=2)
    fit.fit(model, datamodule=data)
    fit.test(model, datamodule=data)

    grad, sat, var, corr, _ = callbacks
    activations = [name for name, m in model.named_modules() if isinstance(m, GAAF)]
    assert len(activations) == 6  # surgery ran in setup, before the monitors looked for activations
    assert list(sat.history) == list(var.history) == activations
    assert sat.stats()["thresholds"][activations[0]]["activation"] == "ReLU"
    assert "backbone.features.conv1" in grad.history and "backbone.classifier.out" in grad.history
    assert all(sat.eval_stats[name]["count"] > 0 for name in activations)
    nodes = {r["layer"]: r["nodes"] for r in corr.rows}
    assert nodes[activations[0]] == 4 and nodes[activations[-1]] == 8  # conv: channels; fc: units
    files = {p.name for p in (tmp_path / "run" / "stats").iterdir()}
    assert files == {
        "grad_info.json",
        "saturation.json",
        "net_var.json",
        "weight_hist.json",
        "node_correlation.json",
    }


def test_saturation_of_a_module_without_derivable_area_is_nan_with_a_warning(tmp_path):
    backbone = nn.Sequential(nn.Linear(6, 5), nn.Softmax(dim=-1), nn.Linear(5, 3))
    monitor = SaturationMonitor(log_every_n_steps=1, include=["backbone.1"])
    with pytest.warns(UserWarning, match=r"cannot derive the saturation area of backbone.1"):
        trainer(tmp_path, [monitor], max_steps=1).fit(TinyModule(backbone), datamodule=TinyData())
    assert math.isnan(monitor.history["backbone.1"]["saturation"][0])
    assert math.isfinite(monitor.history["backbone.1"]["mean"][0])


def test_test_loop_limits_apply_to_the_test_set_statistics(tmp_path):
    monitor = SaturationMonitor()
    fit = trainer(tmp_path, [monitor], max_steps=1, limit_test_batches=1)
    model = TinyModule(mlp())
    fit.fit(model, datamodule=TinyData())
    fit.test(model, datamodule=TinyData())
    assert monitor.eval_stats["backbone.1"]["count"] == 8 * 8  # one test batch of 8, 8 nodes


def test_history_survives_resuming_from_a_checkpoint(tmp_path):
    first = [GradInfoMonitor(log_every_n_steps=1), SaturationMonitor(log_every_n_steps=1)]
    model = TinyModule(mlp())
    fit = trainer(tmp_path, first, max_steps=2)
    fit.fit(model, datamodule=TinyData())
    fit.save_checkpoint(tmp_path / "mid.ckpt")

    second = [GradInfoMonitor(log_every_n_steps=1), SaturationMonitor(log_every_n_steps=1)]
    trainer(tmp_path, second, max_steps=4).fit(
        TinyModule(mlp()), datamodule=TinyData(), ckpt_path=tmp_path / "mid.ckpt"
    )
    for before, after in zip(first, second, strict=True):
        assert before.steps == [0, 1] and after.steps == [0, 1, 2, 3]
    assert second[0].history["backbone.0"][:2] == first[0].history["backbone.0"]
    assert second[1].history["backbone.1"]["hist"][:2] == first[1].history["backbone.1"]["hist"]
    saved = json.loads((tmp_path / "stats" / "grad_info.json").read_text())
    assert saved["steps"] == [0, 1, 2, 3]


def test_net_variance_probe_is_one_tiled_forward_unless_the_batch_moves(tmp_path):
    """The repeats run as one forward of repeats x samples rows; a model that puts the batch
    dimension elsewhere gets separate forwards, and both give the Bernoulli variance."""

    class BatchLast(nn.Module):
        def forward(self, x):
            return x.t()

    def run(backbone, forwards):
        calls = []
        backbone.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
        monitor = NetVarMonitor(log_every_n_steps=1, repeats=400, max_samples=4)
        trainer(tmp_path, [monitor], max_steps=1).fit(TinyModule(backbone), datamodule=TinyData(batch_size=8))
        probe = calls[: len(calls) - 1]  # the last call is the training forward
        assert len(probe) == forwards, probe
        return monitor.history

    torch.manual_seed(0)
    tiled = nn.Sequential(nn.Linear(6, 10), nn.Dropout(0.5), nn.Tanh(), nn.Linear(10, 3))
    history = run(tiled, forwards=1)
    assert history["backbone.2"][0] > 0

    moved = nn.Sequential(
        nn.Linear(6, 10), nn.Dropout(0.5), BatchLast(), nn.Tanh(), BatchLast(), nn.Linear(10, 3)
    )
    with torch.no_grad():
        moved[0].load_state_dict(tiled[0].state_dict())
        moved[5].load_state_dict(tiled[3].state_dict())
    history_moved = run(moved, forwards=1 + 400)  # the tiled try, then one forward per repeat
    assert history_moved["backbone.3"][0] == pytest.approx(history["backbone.2"][0], rel=0.15)
