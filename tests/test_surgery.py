"""apply_gaaf / strip_gaaf: counts, names, shared modules, functional calls, round trips, refusals."""

import os
import re
import socket
import warnings
from collections import OrderedDict

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lightning_gaaf import GAAF, apply_gaaf, strip_gaaf
from lightning_gaaf.surgery import policy_from_mapping


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return F.relu(self.lin(x)) + torch.tanh(x).sigmoid()


class Nested(nn.Module):
    """Sequential, ModuleList, ModuleDict, a module shared by two parents, functional calls."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Tanh()
        self.seq = nn.Sequential(nn.Linear(8, 8), self.shared, nn.Linear(8, 8), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList([nn.Linear(8, 8), self.shared, Block()])
        self.heads = nn.ModuleDict({"act": nn.GELU(), "out": nn.Linear(8, 3)})

    def forward(self, x):
        x = self.seq(x)
        x = self.blocks[1](self.blocks[0](x))
        x = self.blocks[2](x)
        return F.leaky_relu(self.heads["out"](self.heads["act"](x)), 0.3)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return Nested()


def test_module_surgery_counts_names_and_shared_module():
    model = make_model()
    report = apply_gaaf(model)
    assert set(report) == {"shared", "seq.1", "blocks.1", "seq.3", "heads.act"}
    assert report.count == 3  # the shared Tanh is wrapped once
    assert report["shared"].new is report["seq.1"].new is report["blocks.1"].new
    assert model.shared is model.seq[1] is model.blocks[1]
    assert isinstance(model.shared, GAAF) and isinstance(model.shared.base, nn.Tanh)
    assert set(report.shared["seq.1"]) == {"shared", "blocks.1"}
    assert "shared with" in report.summary()
    assert isinstance(model.seq[3], GAAF) and isinstance(model.heads["act"], GAAF)
    assert not any(isinstance(m, GAAF) for m in model.blocks[2].modules()), "functional off by default"


def test_functional_calls_are_rewritten_with_fx():
    model = make_model()
    x = torch.randn(5, 8)
    reference = model(x)
    report = apply_gaaf(model, functional=True)
    assert set(report.functional) == {"blocks.2.relu", "blocks.2.tanh", "blocks.2.sigmoid", "leaky_relu"}
    assert isinstance(report["leaky_relu"].new.base, nn.LeakyReLU)
    assert report["leaky_relu"].new.base.negative_slope == 0.3
    gaaf_modules = [m for m in model.modules() if isinstance(m, GAAF)]
    assert len(gaaf_modules) == 3 + 4
    out = model(x)
    assert (out - reference).abs().max() < 1e-3
    assert not torch.equal(out, reference), "the functional activations now carry the GAAF term"
    # The gradient flows through the new modules: a GAAF backward differs from the plain one.
    plain = make_model()
    x.requires_grad_(True)
    (g_gaaf,) = torch.autograd.grad(model(x).sum(), x)
    (g_plain,) = torch.autograd.grad(plain(x).sum(), x)
    assert (g_gaaf - g_plain).abs().max() > 1e-2


def test_strip_round_trip_restores_classes_keys_and_outputs():
    model = make_model()
    originals = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Tanh, nn.ReLU, nn.GELU))}
    keys = list(model.state_dict())
    params = [id(p) for p in model.parameters()]
    x = torch.randn(4, 8)
    before = model(x)

    apply_gaaf(model, functional=True)
    assert list(model.state_dict()) == keys, "GAAF adds no parameters or buffers"
    assert [id(p) for p in model.parameters()] == params, "optimizer params stay valid"
    report = strip_gaaf(model)
    assert len(report) == 5 + 4
    assert not any(isinstance(m, GAAF) for m in model.modules())
    for name, module in originals.items():
        assert model.get_submodule(name) is module
    assert model.seq[3].inplace is True
    assert list(model.state_dict()) == keys
    assert torch.equal(model(x), before)
    # Checkpoints move freely between GAAF and plain models.
    gaaf_model = make_model()
    apply_gaaf(gaaf_model)
    gaaf_model.load_state_dict(model.state_dict())
    model.load_state_dict(gaaf_model.state_dict())


def test_second_apply_changes_nothing_and_warns():
    model = make_model()
    apply_gaaf(model, functional=True)
    structure = repr(model)
    with pytest.warns(UserWarning, match="already has 7 GAAF module"):
        report = apply_gaaf(model, functional=True)
    assert len(report) == 0
    assert repr(model) == structure


def test_include_exclude_and_targets():
    model = make_model()
    report = apply_gaaf(model, include="seq.*", exclude=["seq.3"])
    assert set(report) == {"seq.1"}
    # Selection is by qualified name: the other places of the shared Tanh keep the plain module,
    # and the report says where else it was registered.
    assert isinstance(model.seq[1], GAAF) and model.blocks[1] is model.shared is model.seq[1].base
    assert set(report.shared["seq.1"]) == {"shared", "blocks.1"}

    model = make_model()
    assert set(apply_gaaf(model, targets=["relu", "gelu"])) == {"seq.3", "heads.act"}
    model = make_model()
    assert set(apply_gaaf(model, targets=[nn.Tanh])) == {"shared", "seq.1", "blocks.1"}
    model = make_model()
    assert set(apply_gaaf(model, targets="torch.nn.GELU")) == {"heads.act"}


def test_options_reach_the_modules():
    model = make_model()
    apply_gaaf(model, K=500, shape="gauss", shape_kwargs={"c": 1.5})
    assert model.seq[3].K == 500 and repr(model.seq[3].shape) == "gauss(c=1.5)"
    model = make_model()
    apply_gaaf(model, K=None)
    x = torch.randn(4, 8)
    assert torch.equal(model(x), strip_gaaf(model) and model(x)), "exact mode: identical forward"


def test_keeps_device_and_dtype():
    model = make_model().double()
    apply_gaaf(model)
    out = model(torch.randn(2, 8, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}


def test_torchvision_resnet_block_reuses_its_relu():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    report = apply_gaaf(model)
    # one stem relu + one relu per BasicBlock (called twice inside its forward)
    assert report.count == len(report) == 1 + 8
    assert isinstance(model.layer1[0].relu, GAAF)
    after = model(x)
    assert after.shape == (2, 10)
    assert (after - before).abs().max() < 1e-2
    strip_gaaf(model)
    assert torch.equal(model(x), before)


def test_clear_errors_for_bad_options():
    with pytest.raises(ValueError, match=r"unknown target 'tanhh'.*tanh"):
        apply_gaaf(make_model(), targets=["tanhh"])
    with pytest.raises(ValueError, match="unknown target 'nowhere.Thing'"):
        apply_gaaf(make_model(), targets=["nowhere.Thing"])
    with pytest.raises(ValueError, match="K must be a positive"):
        apply_gaaf(make_model(), K=0)
    with pytest.raises(ValueError, match="unknown shape 'sawtooth'"):
        apply_gaaf(make_model(), shape="sawtooth")
    with pytest.warns(UserWarning, match="no activation matched"):
        apply_gaaf(nn.Linear(2, 2))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            return torch.tanh(self.lin(x))
        return x


def test_untraceable_module_is_named_in_the_error():
    model = nn.Sequential(nn.Linear(4, 4), Untraceable())
    with pytest.raises(RuntimeError, match=r"could not trace module '1' \(Untraceable\)"):
        apply_gaaf(model, functional=True)
    # Without functional rewriting the module is simply left alone.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(apply_gaaf(model)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_wrapped_model_is_refused():
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(_free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(make_model())
        with pytest.raises(TypeError, match="wrapped in DistributedDataParallel; apply GAAF surgery"):
            apply_gaaf(wrapped)
        with pytest.raises(TypeError, match="before wrapping"):
            strip_gaaf(wrapped)
        # The documented route: surgery on the bare module, then wrap.
        bare = make_model()
        apply_gaaf(bare)
        wrapped = nn.parallel.DistributedDataParallel(bare)
        wrapped(torch.randn(2, 8)).sum().backward()
        assert bare.seq[0].weight.grad is not None
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- other libraries' models
def _gaaf_calls(model: nn.Module, run) -> dict[str, int]:
    """How often each GAAF module of ``model`` ran during ``run()`` (forward hooks, removed after)."""
    calls: dict[str, int] = {}
    handles = [
        m.register_forward_hook(
            lambda mod, args, out, name=name: calls.__setitem__(name, calls.get(name, 0) + 1)
        )
        for name, m in model.named_modules()
        if isinstance(m, GAAF)
    ]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return calls


def _round_trip(model: nn.Module, inputs: dict, main_path: set[str], upstream: nn.Parameter, output) -> None:
    """Surgery puts GAAF on ``main_path``, which runs, changes ``upstream``'s gradient; strip restores."""
    model.eval()  # no dropout; torch's transformer fast path would run in eval + no_grad

    def forward_value() -> torch.Tensor:
        with torch.no_grad():
            return output(model(**inputs))

    def gradient() -> torch.Tensor:
        model.zero_grad()
        output(model(**inputs)).square().sum().backward()
        return upstream.grad.clone()

    before, grad_before = forward_value(), gradient()
    report = apply_gaaf(model)
    assert main_path <= set(report), report.summary()
    assert set(_gaaf_calls(model, forward_value)) >= main_path, "the main path runs through GAAF"
    after, grad_after = forward_value(), gradient()
    assert (after - before).abs().max() < 1e-2, "GAAF moves the forward by a tiny amount only"
    assert (grad_after - grad_before).abs().max() > 1e-4 * grad_before.abs().max(), "gradients change"
    strip_gaaf(model)
    assert not any(isinstance(m, GAAF) for m in model.modules())
    assert torch.equal(forward_value(), before), "strip restores bit-identical outputs"
    assert torch.equal(gradient(), grad_before)


def test_transformer_encoder_function_attribute_is_replaced_and_restored():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    assert model.layers[0].activation is F.relu and model.layers[0].activation_relu_or_gelu == 1
    x = torch.randn(3, 5, 16)
    report = apply_gaaf(nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False))
    assert report.attributes == ["layers.0.activation", "layers.1.activation"]
    assert "function attribute" in report.reasons["layers.0.activation"]
    assert "relu" in report.reasons["layers.0.activation"]
    _round_trip(
        model,
        {"src": x},
        {"layers.0.activation", "layers.1.activation"},
        model.layers[0].linear1.weight,
        lambda out: out,
    )
    assert model.layers[0].activation is F.relu, "the function itself is back"
    assert model.layers[0].activation_relu_or_gelu == 1, "and the fast path with it"


def test_transformer_layer_fast_path_is_off_while_gaaf_is_applied():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        16, 2, dim_feedforward=32, dropout=0.0, batch_first=True, activation="gelu"
    )
    layer.eval()
    apply_gaaf(layer)
    assert layer.activation_relu_or_gelu == 0
    with torch.no_grad():  # the conditions of torch's fused inference path
        calls = _gaaf_calls(layer, lambda: layer(torch.randn(2, 4, 16)))
    assert calls == {"activation": 1}


def test_timm_model_activation_classes_are_recognised():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=5,
        act_layer="gelu",  # timm's own GELU class
    )
    act = model.blocks[0].mlp.act
    assert type(act).__module__.startswith("timm.")
    report = apply_gaaf(model)
    assert "timm.layers.activations.GELU is catalogue activation 'gelu'" in report.reasons["blocks.0.mlp.act"]
    assert report["blocks.0.mlp.act"].new.fused
    strip_gaaf(model)
    _round_trip(
        model,
        {"x": torch.randn(2, 3, 32, 32)},
        {"blocks.0.mlp.act", "blocks.1.mlp.act"},
        model.blocks[0].mlp.fc1.weight,
        lambda out: out,
    )


@pytest.mark.parametrize(
    ("hidden_act", "base"), [("gelu", "gelu"), ("gelu_new", "gelu_tanh"), ("silu", "silu")]
)
def test_hugging_face_model_from_a_config_goes_through_gaaf(hidden_act, base):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_act=hidden_act,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = transformers.BertModel(config)  # random weights: nothing is downloaded
    main = {f"encoder.layer.{i}.intermediate.intermediate_act_fn" for i in range(2)}
    report = apply_gaaf(model)
    assert main | {"pooler.activation"} <= set(report)
    assert (
        f"is catalogue activation {base!r}"
        in report.reasons["encoder.layer.0.intermediate.intermediate_act_fn"]
    )
    assert all(report[name].new.fused for name in main)
    strip_gaaf(model)
    _round_trip(
        model,
        {"input_ids": torch.randint(0, 50, (2, 7))},
        main,
        model.encoder.layer[0].intermediate.dense.weight,
        lambda out: out.last_hidden_state,  # the encoder output: not only the pooler
    )


# ----------------------------------------------------------------------------- registration, look-alikes, policy
class MySwish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


def my_swish(x):
    return x * torch.sigmoid(x)


class FancyActivation(nn.Module):
    def forward(self, x):
        return torch.clamp(x, -1, 1) * 0.5


class WithAttribute(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.act_fn = fn

    def forward(self, x):
        return self.act_fn(self.lin(x))


def test_register_activation_for_a_class_and_a_function():
    from lightning_gaaf import register_activation
    from lightning_gaaf.activations import unregister_activation

    model = nn.Sequential(nn.Linear(4, 4), MySwish(), WithAttribute(my_swish))
    with pytest.warns(UserWarning, match="no activation matched"):
        report = apply_gaaf(model)
    assert set(report.skipped) == {"1", "2.act_fn"}, report.summary()
    assert "not in the activation catalogue" in report.skipped["1"]
    register_activation(MySwish, "silu")
    register_activation(my_swish, "silu")
    try:
        report = apply_gaaf(model)
        assert set(report) == {"1", "2.act_fn"} and not report.skipped
        assert "MySwish registered as 'silu'" in report.reasons["1"]
        assert "my_swish registered as 'silu'" in report.reasons["2.act_fn"]
        assert model[1].fused and model[2].act_fn.fused
        x = torch.randn(10, 4)
        with torch.no_grad():
            torch.testing.assert_close(model[1](x), GAAF(nn.SiLU())(x), rtol=0, atol=0)
        strip_gaaf(model)
        assert isinstance(model[1], MySwish) and model[2].act_fn is my_swish
    finally:
        unregister_activation(MySwish)
        unregister_activation(my_swish)
    with pytest.raises(ValueError, match="unknown activation 'swish'; known activations: tanh"):
        register_activation(MySwish, "swish")


def test_look_alikes_are_listed_not_replaced():
    model = nn.Sequential(nn.Linear(4, 4), nn.Mish(), FancyActivation(), nn.Tanh(), nn.Softmax(dim=-1))
    report = apply_gaaf(model)
    assert set(report) == {"3"}
    assert set(report.skipped) == {"1", "2", "4"}
    assert "Mish is not in the activation catalogue" in report.skipped["1"]
    summary = report.summary()
    assert "3 look-alike(s) not replaced" in summary and "FancyActivation" in summary
    # targets=[cls] takes one in anyway (generic path: its own autograd plus the GAAF term)
    report = apply_gaaf(model, targets=[nn.Mish])
    assert set(report) == {"1"} and not model[1].fused and "generic path" in report.reasons["1"]


def test_policy_chooses_options_per_layer():
    model = make_model()
    seen = []

    def policy(name, module):
        seen.append((name, type(module).__name__))
        if isinstance(module, nn.GELU):
            return None
        return {"K": 100.0, "shape": "one"} if name.startswith("seq.") else {}

    report = apply_gaaf(model, policy=policy, functional=True)
    assert ("heads.act", "GELU") in seen and ("leaky_relu", "LeakyReLU") in seen
    assert report.skipped["heads.act"] == "the policy returned None"
    assert isinstance(model.heads["act"], nn.GELU)
    assert model.seq[3].K == 100.0 and repr(model.seq[3].shape) == "one()"
    assert report["leaky_relu"].new.K == 10_000 and repr(report["leaky_relu"].new.shape).startswith("shifted")
    with pytest.raises(ValueError, match=r"the policy returned unknown option\(s\) \['k'\] for 'shared'"):
        apply_gaaf(make_model(), policy=lambda name, module: {"k": 1.0})
    with pytest.raises(TypeError, match=r"policy must be a callable .* or a mapping \{name glob"):
        apply_gaaf(make_model(), policy=3)


def features_and_head() -> nn.Module:
    """``features.1``, ``features.3`` (Tanh), ``head.1`` (ReLU), ``head.3`` (Sigmoid)."""
    features = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh())
    head = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2), nn.Sigmoid())
    return nn.Sequential(OrderedDict(features=features, head=head))


def test_policy_mapping_first_matching_glob_decides():
    rules = {"features.3": {"K": 100.0, "shape": "one"}, "features.*": {"K": 1000.0}, "head.1": None}
    model = features_and_head()
    report = apply_gaaf(model, K=5000.0, policy=rules)
    assert set(report) == {"features.1", "features.3", "head.3"}
    # features.3 matches two globs: the first one written decides.
    assert model.features[3].K == 100.0 and repr(model.features[3].shape) == "one()"
    assert model.features[1].K == 1000.0 and repr(model.features[1].shape) == "gauss(c=3.0)"
    # head.3 matches no glob: the call's options. head.1 maps to None: left alone, and reported.
    assert model.head[3].K == 5000.0 and isinstance(model.head[3].base, nn.Sigmoid)
    assert type(model.head[1]) is nn.ReLU
    assert report.skipped["head.1"] == "the policy returned None"
    summary = report.summary()
    assert "features.3: Tanh() -> GAAF(Tanh, shape=one(), K=100)" in summary
    assert "features.1: Tanh() -> GAAF(Tanh, shape=gauss(c=3.0), K=1000)" in summary
    assert "head.3: Sigmoid() -> GAAF(Sigmoid, shape=gauss(c=3.0), K=5000)" in summary

    swapped = features_and_head()
    apply_gaaf(swapped, K=5000.0, policy=dict(reversed(list(rules.items()))))
    assert swapped.features[3].K == 1000.0  # now "features.*" comes first


BAD_MAPPINGS = {
    "unknown option": (
        {"features.*": {"K": 1.0, "k": 2.0}},
        "policy glob 'features.*': unknown option 'k'; allowed: K, shape, shape_kwargs",
    ),
    "options, not a mapping": (
        {"K": 1.0},
        "policy glob 'K': expected options (K, shape, shape_kwargs) or null, got 1.0 "
        "(a policy mapping is {name glob: options})",
    ),
    "unknown shape": ({"head.*": {"shape": "gaus"}}, "policy glob 'head.*': GAAF: unknown shape 'gaus'"),
    "bad K": (
        {"head.*": None, "features.*": {"K": -1}},
        "policy glob 'features.*': GAAF: K must be a positive",
    ),
    "glob not a string": ({3: {}}, "policy: glob 3 is not a string"),
}


@pytest.mark.parametrize("case", BAD_MAPPINGS)
def test_bad_policy_mapping_fails_in_one_line_naming_the_glob(case):
    rules, message = BAD_MAPPINGS[case]
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        policy_from_mapping(rules)  # checked when the policy is built, before any model is seen
    assert "\n" not in str(err.value)
    model = features_and_head()
    with pytest.raises(ValueError, match=re.escape(message)):
        apply_gaaf(model, policy=rules)
    assert not any(isinstance(m, GAAF) for m in model.modules())
