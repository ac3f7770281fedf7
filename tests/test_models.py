"""The paper's networks, the activation registry, ImageClassifier and CosineAnnealing."""

from __future__ import annotations

import math
import warnings

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_gaaf import GAAF, apply_gaaf
from lightning_gaaf.activations import CATALOG, activation_classes
from lightning_gaaf.models import (
    MLP,
    VGG,
    CosineAnnealing,
    ImageClassifier,
    SmallCNN,
    make_activation,
)

warnings.filterwarnings("ignore", ".*does not have many workers.*")


def linear(i: int, o: int) -> int:
    return i * o + o


def conv3x3(i: int, o: int) -> int:
    return i * o * 9 + o


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def activation_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (*activation_classes(), GAAF))]


# ----------------------------------------------------------------------------- parameter counts
def test_mlp_parameter_count_is_the_papers_784_512_256_256_10() -> None:
    expected = linear(784, 512) + linear(512, 256) + linear(256, 256) + linear(256, 10)
    assert expected == 601_610
    assert n_params(MLP()) == expected
    bn = 2 * (512 + 256 + 256)  # BatchNorm1d weight and bias per hidden unit
    assert n_params(MLP(batch_norm=True, dropout=0.5)) == expected + bn


@pytest.mark.parametrize("num_classes", [10, 100])
def test_vgg_parameter_count(num_classes: int) -> None:
    channels = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512]  # VGG16 minus its last three convs
    convs = sum(conv3x3(i, o) for i, o in zip(channels[:-1], channels[1:], strict=True))
    head = linear(512 * 2 * 2, 512) + linear(512, 512) + linear(512, num_classes)  # 32 px / 2**4 = 2
    assert n_params(VGG(num_classes=num_classes)) == convs + head
    bn = 2 * (sum(channels[1:]) + 512 + 512)
    assert n_params(VGG(num_classes=num_classes, batch_norm=True)) == convs + head + bn


def test_small_cnn_parameter_count() -> None:
    convs = conv3x3(3, 32) + conv3x3(32, 32) + conv3x3(32, 64) + conv3x3(64, 64)
    head = linear(64 * 8 * 8, 512) + linear(512, 256) + linear(256, 10)  # 32 px, two poolings
    assert n_params(SmallCNN()) == convs + head
    bn = 2 * (32 + 32 + 64 + 64 + 512 + 256)
    assert n_params(SmallCNN(batch_norm=True)) == convs + head + bn


def test_widths_and_input_geometry_are_configurable() -> None:
    vgg = VGG(num_classes=7, in_channels=1, input_size=64, classifier_widths=(32,))
    assert vgg(torch.randn(2, 1, 64, 64)).shape == (2, 7)
    assert vgg.classifier.fc1.in_features == 512 * 4 * 4
    cnn = SmallCNN(
        num_classes=5, in_channels=1, input_size=28, conv_widths=(8, 8, 16, 16), fc_widths=(20, 10)
    )
    assert cnn(torch.randn(3, 1, 28, 28)).shape == (3, 5)
    assert cnn.classifier.fc1.in_features == 16 * 7 * 7
    mlp = MLP(in_features=3 * 32 * 32, hidden=(64,), num_classes=4, activation="relu")
    assert mlp(torch.randn(2, 3, 32, 32)).shape == (2, 4)  # flattens its input


# ----------------------------------------------------------------------------- layer structure
def test_one_activation_module_per_layer_with_readable_names() -> None:
    mlp, vgg, cnn = MLP(), VGG(), SmallCNN()
    assert activation_names(mlp) == ["act1", "act2", "act3"]
    assert activation_names(vgg) == [f"features.act{i}" for i in range(1, 11)] + [
        "classifier.act1",
        "classifier.act2",
    ]
    assert activation_names(cnn) == [f"features.act{i}" for i in range(1, 5)] + [
        "classifier.act1",
        "classifier.act2",
    ]
    for model, kind in ((mlp, nn.Tanh), (vgg, nn.ReLU), (cnn, nn.ReLU)):
        acts = [model.get_submodule(n) for n in activation_names(model)]
        assert all(type(a) is kind for a in acts)
        assert len({id(a) for a in acts}) == len(acts)  # separate instances
        assert not any(getattr(a, "inplace", False) for a in acts)


def test_mlp_layer_order_dropout_after_activation_never_on_input() -> None:
    names = [n for n, _ in MLP(dropout=0.3, batch_norm=True).named_children()]
    assert names == [
        "flatten",
        *("fc1", "bn1", "act1", "drop1"),
        *("fc2", "bn2", "act2", "drop2"),
        *("fc3", "bn3", "act3", "drop3"),
        "out",
    ]
    assert [n for n, _ in MLP().named_children()] == [
        "flatten",
        "fc1",
        "act1",
        "fc2",
        "act2",
        "fc3",
        "act3",
        "out",
    ]


def test_mlp_dropout_drops_hidden_units_but_not_input_pixels() -> None:
    torch.manual_seed(0)
    model = MLP(dropout=0.9).train()
    seen: dict[str, torch.Tensor] = {}
    model.fc1.register_forward_pre_hook(lambda m, args: seen.__setitem__("fc1_in", args[0]))
    model.fc2.register_forward_pre_hook(lambda m, args: seen.__setitem__("fc2_in", args[0]))
    x = torch.rand(16, 1, 28, 28) + 0.1  # no zero pixels
    model(x)
    assert torch.equal(seen["fc1_in"], x.flatten(1))  # every input pixel reaches the first layer
    dropped = (seen["fc2_in"] == 0).float().mean().item()
    assert 0.8 < dropped < 0.97  # ~90 % of the first hidden layer's outputs are dropped


def test_conv_models_put_batch_norm_before_each_hidden_activation() -> None:
    vgg = VGG(batch_norm=True, dropout=0.5)
    features = [n for n, _ in vgg.features.named_children()]
    assert features[:7] == ["conv1", "bn1", "act1", "conv2", "bn2", "act2", "pool1"]
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.features) == 4
    assert [n for n, _ in vgg.classifier.named_children()] == [
        *("fc1", "bn1", "act1", "drop1"),
        *("fc2", "bn2", "act2", "drop2"),
        "out",
    ]
    cnn = [n for n, _ in SmallCNN().features.named_children()]
    assert cnn == ["conv1", "act1", "conv2", "act2", "pool1", "conv3", "act3", "conv4", "act4", "pool2"]


# ----------------------------------------------------------------------------- activation names
def test_make_activation_builds_fresh_plain_modules() -> None:
    expected = {
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "relu": nn.ReLU,
        "leaky_relu": nn.LeakyReLU,
        "elu": nn.ELU,
        "gelu": nn.GELU,
        "gelu_tanh": nn.GELU,
        "silu": nn.SiLU,
        "hardtanh": nn.Hardtanh,
        "relu6": nn.ReLU6,
        "softplus": nn.Softplus,
        "softsign": nn.Softsign,
        "hardsigmoid": nn.Hardsigmoid,
    }
    # The model names are the catalogue's (quick_gelu: a catalogue class, torch has none).
    assert set(CATALOG) == set(expected) | {"quick_gelu"}
    assert make_activation("gelu_tanh").approximate == "tanh"
    for name, cls in expected.items():
        a, b = make_activation(name), make_activation(name)
        assert type(a) is cls and a is not b
        assert getattr(a, "inplace", False) is False
        model = MLP(hidden=(4,), activation=name)
        assert type(model.act1) is cls


@pytest.mark.parametrize(
    "build",
    [
        lambda: MLP(activation="swish"),
        lambda: VGG(activation="swish"),
        lambda: SmallCNN(activation="swish"),
        lambda: make_activation("swish"),
    ],
)
def test_unknown_activation_lists_the_valid_names(build) -> None:
    with pytest.raises(ValueError, match=r"activation: unknown activation 'swish'") as info:
        build()
    for name in CATALOG:
        assert name in str(info.value)


def test_invalid_geometry_and_dropout_are_rejected() -> None:
    with pytest.raises(ValueError, match="input_size: 40 is not divisible by 2\\*\\*4"):
        VGG(input_size=40)
    with pytest.raises(ValueError, match="dropout: must be in \\[0, 1\\)"):
        MLP(dropout=1.0)
    with pytest.raises(ValueError, match="dropout"):
        SmallCNN(dropout=-0.1)


@pytest.mark.parametrize(("model", "count"), [(MLP(), 3), (VGG(), 12), (SmallCNN(), 6)])
def test_gaaf_surgery_wraps_every_activation_of_the_plain_models(model: nn.Module, count: int) -> None:
    """Models are built plain; surgery finds exactly one module per hidden layer."""
    assert not any(isinstance(m, GAAF) for m in model.modules())
    names = activation_names(model)
    x = torch.randn(4, 1, 28, 28) if isinstance(model, MLP) else torch.randn(4, 3, 32, 32)
    model.eval()
    before = model(x)
    report = apply_gaaf(model)
    assert sorted(report) == sorted(names)
    assert len(report) == count and all(isinstance(model.get_submodule(n), GAAF) for n in report)
    # GAAF moves each activation's output by less than 0.5/K: the logits barely change.
    assert torch.allclose(model(x), before, atol=1e-2)


# ----------------------------------------------------------------------------- ImageClassifier
def quiet_trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_num_classes_is_inferred_or_checked_against_the_backbone() -> None:
    assert ImageClassifier(MLP(num_classes=7)).num_classes == 7
    with pytest.raises(ValueError, match="model.num_classes: the data has 100 classes .* has 10 outputs"):
        ImageClassifier(VGG(num_classes=10), num_classes=100)
    with pytest.raises(ValueError, match="model.num_classes: cannot infer"):
        ImageClassifier(nn.Identity())
    assert ImageClassifier(nn.Identity(), num_classes=3).num_classes == 3


def test_accuracy_is_the_fraction_of_correct_predictions() -> None:
    """Micro accuracy: 3 of 4 right is 0.75 (macro averaging over classes would give 0.5)."""
    logits = torch.tensor([[5.0, 0.0], [5.0, 0.0], [5.0, 0.0], [5.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1])
    model = ImageClassifier(nn.Identity(), num_classes=2)
    [result] = quiet_trainer().test(
        model, DataLoader(TensorDataset(logits, labels), batch_size=3), verbose=False
    )
    assert result["test/acc"] == pytest.approx(0.75)
    expected_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    # Epoch loss is the batch-size weighted mean over the two batches (3 + 1 samples).
    assert result["test/loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_fit_logs_train_and_val_metrics_and_learns() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 1, 4, 4)
    y = (x.flatten(1).sum(1) > 0).long()
    data = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    model = ImageClassifier(
        MLP(in_features=16, hidden=(16,), num_classes=2),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9),
    )
    trainer = quiet_trainer(max_epochs=8, log_every_n_steps=1)
    trainer.fit(model, data, DataLoader(TensorDataset(x, y), batch_size=64))
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(metrics)
    assert metrics["val/acc"] > 0.9 and metrics["train/acc"] > 0.85


def test_train_acc_is_the_accuracy_over_every_training_sample_of_the_epoch() -> None:
    """With lr = 0 the model is fixed, so train/acc must equal its accuracy on the training set."""
    torch.manual_seed(1)
    x = torch.randn(200, 1, 4, 4)
    y = torch.randint(0, 3, (200,))
    backbone = MLP(in_features=16, hidden=(8,), num_classes=3)
    with torch.no_grad():
        expected = (backbone(x).argmax(-1) == y).double().mean().item()
    model = ImageClassifier(backbone, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True))  # 64+64+64+8
    assert trainer.callback_metrics["train/acc"].item() == pytest.approx(expected, abs=1e-6)
    assert 0.1 < expected < 0.9
    assert "_train_correct" not in model.state_dict()  # not part of checkpoints


def test_default_optimizer_and_cosine_schedule_follow_the_trainer() -> None:
    model = ImageClassifier(MLP(hidden=(8,)))
    model.trainer = quiet_trainer(max_epochs=7)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == 0.01 and optimizer.defaults["momentum"] == 0.9

    model = ImageClassifier(
        MLP(hidden=(8,)),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        lr_scheduler=lambda opt: CosineAnnealing(opt),
    )
    model.trainer = quiet_trainer(max_epochs=7)
    config = model.configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "epoch"
    assert isinstance(scheduler, CosineAnnealing) and scheduler.max_epochs == 7

    model = ImageClassifier(
        MLP(hidden=(8,)),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt),
    )
    model.trainer = quiet_trainer(max_epochs=2)
    assert model.configure_optimizers()["lr_scheduler"]["monitor"] == "val/loss"


def test_cosine_annealing_values() -> None:
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = CosineAnnealing(optimizer, max_epochs=4, eta_min=0.01)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * min(e, 4) / 4)) for e in range(6)]
    assert lrs == pytest.approx(expected)
    assert lrs[2] == pytest.approx(0.055) and lrs[4] == lrs[5] == pytest.approx(0.01)

    constant = CosineAnnealing(torch.optim.SGD([param], lr=0.3))  # period not bound yet
    constant.optimizer.step()
    constant.step()
    assert constant.get_last_lr() == [0.3]
    with pytest.raises(ValueError, match="max_epochs"):
        CosineAnnealing(optimizer, max_epochs=0)
