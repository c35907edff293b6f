"""Tests of tcomplex.experiments.models: shapes, gating-layer counts, determinism."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from tcomplex.experiments import models as M
from tcomplex.experiments.models import build_model, get_spec, list_models

torch.set_num_threads(2)

EXPECTED_NAMES = [
    "mlp_mnist", "mlp_alpha", "mlp_beta", "mlp_cifar10", "lenet5", "vgg11_revised", "vgg16",
    "resnet20", "resnet32", "resnet18", "resnet34", "resmlp10", "task_mlp", "target_mlp",
    "vae_classifier",
]  # fmt: skip

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)
CROP = (3, 64, 64)

# Input shapes each model is run on: everything on 1x28x28 (the offline data),
# plus the shapes the paper uses it with.
SHAPES: dict[str, list[tuple[int, int, int]]] = {
    "mlp_mnist": [MNIST],
    "mlp_alpha": [MNIST],
    "mlp_beta": [MNIST],
    "mlp_cifar10": [MNIST, CIFAR],
    "lenet5": [MNIST, CIFAR],
    "vgg11_revised": [MNIST, CIFAR],
    "vgg16": [MNIST, CROP],
    "resnet20": [MNIST, CIFAR],
    "resnet32": [MNIST, CIFAR],
    "resnet18": [MNIST, CROP],
    "resnet34": [MNIST, CROP],
    "resmlp10": [MNIST, CIFAR],
    "task_mlp": [MNIST, (1, 32, 32)],
    "target_mlp": [MNIST, (1, 32, 32)],
    "vae_classifier": [MNIST, CIFAR],
}

# Gating-layer calls per forward pass (training mode, default kwargs).
# Pre-activation ResNets: a basic block is BN-ReLU-conv-BN-ReLU-conv, i.e. 2 ReLU
# calls; the CIFAR stem is a bare 3x3 conv (no ReLU, no pool); after the last
# block comes one BN-ReLU before the global average pool.  So 2 * blocks + 1:
# ResNet-20: 9 blocks -> 19, ResNet-32: 15 -> 31, ResNet-18: 8 -> 17,
# ResNet-34: 16 -> 33.
EXPECTED_GATES: dict[str, dict[str, int]] = {
    "mlp_mnist": {"ReLU": 4},
    "mlp_alpha": {"ReLU": 10},
    "mlp_beta": {"ReLU": 4},
    "mlp_cifar10": {"ReLU": 4},
    "lenet5": {"ReLU": 4, "MaxPool2d": 2},
    "vgg11_revised": {"ReLU": 8 + 2, "MaxPool2d": 5, "Dropout": 2},
    "vgg16": {"ReLU": 13 + 2, "MaxPool2d": 5, "Dropout": 2},
    "resnet20": {"ReLU": 2 * 9 + 1},
    "resnet32": {"ReLU": 2 * 15 + 1},
    "resnet18": {"ReLU": 2 * 8 + 1},
    "resnet34": {"ReLU": 2 * 16 + 1},
    "resmlp10": {"ReLU": 9},
    "task_mlp": {"ReLU": 1},  # default n_relu = 1
    "target_mlp": {"ReLU": 6},  # default n_relu = 6
    "vae_classifier": {"ReLU": 4},  # encoder 1, decoder 1, classifier 2
}

GATE_TYPES = (nn.ReLU, nn.MaxPool2d, nn.Dropout)


def _logits(out: Any) -> Tensor:
    return out.logits if isinstance(out, M.VAEOutput) else out


@contextmanager
def count_gate_calls(model: nn.Module) -> Iterator[Counter[str]]:
    """Count calls of gating modules (one per call) with forward hooks, by type and by name."""
    counts: Counter[str] = Counter()
    handles = []
    for qualname, module in model.named_modules():
        if isinstance(module, GATE_TYPES):

            def hook(mod: nn.Module, args: Any, out: Any, qualname: str = qualname) -> None:
                counts[type(mod).__name__] += 1
                counts["name:" + qualname] += 1

            handles.append(module.register_forward_hook(hook))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def _type_counts(counts: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if not k.startswith("name:")}


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


def test_registry_names_and_specs() -> None:
    assert list_models() == EXPECTED_NAMES
    for name in list_models():
        spec = get_spec(name)
        assert spec.name == name
        assert spec.family in {"mlp", "conv", "resnet", "vae", "task"}
        assert len(spec.default_input) == 3 and spec.paper_ref and spec.architecture


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="resnet20") as info:
        build_model("resnet21")
    assert all(name in str(info.value) for name in EXPECTED_NAMES)


# ---------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shape"), [(name, shape) for name, shapes in SHAPES.items() for shape in shapes]
)
def test_forward_shape(name: str, shape: tuple[int, int, int]) -> None:
    c, h, _ = shape
    model = build_model(name, in_channels=c, input_size=h, num_classes=7).eval()
    assert type(model).__doc__  # every model class says where the paper defines it
    batch = 1 if h >= 64 else 2  # keep the 64x64 ResNet-34 / VGG-16 passes cheap
    with torch.no_grad():
        out = model(torch.rand(batch, *shape))
    assert _logits(out).shape == (batch, 7)
    if isinstance(out, M.VAEOutput):
        assert out.reconstruction.shape == (batch, c * h * h)
        assert out.mu.shape == out.logvar.shape == (batch, M.VAE_LATENT)


def test_mlp_widths_follow_in_features() -> None:
    by_kwarg = build_model("mlp_cifar10", in_features=784)
    by_shape = build_model("mlp_cifar10", in_channels=1, input_size=28)
    default = build_model("mlp_cifar10")
    assert isinstance(default, M.MLP) and isinstance(by_kwarg, M.MLP) and isinstance(by_shape, M.MLP)
    assert default.widths == M.MLP_CIFAR10_WIDTHS
    assert by_kwarg.widths == by_shape.widths == (784, 1024, 256, 128, 64, 10)
    assert build_model("mlp_mnist").widths == M.MLP_MNIST_WIDTHS
    assert build_model("mlp_alpha").widths == M.MLP_ALPHA_WIDTHS
    assert build_model("mlp_beta", num_classes=5).widths == (784, 1024, 256, 120, 84, 5)
    fcs = [m for m in default.modules() if isinstance(m, nn.Linear)]
    assert all(fc.bias is None for fc in fcs)
    # kaiming-normal, fan-in, ReLU gain: std = sqrt(2 / 3072)
    assert fcs[0].weight.std().item() == pytest.approx((2 / 3072) ** 0.5, rel=0.02)


@pytest.mark.parametrize("size", [28, 32])
def test_lenet_flatten_is_400(size: int) -> None:
    model = build_model("lenet5", in_channels=1 if size == 28 else 3, input_size=size)
    assert isinstance(model, M.LeNet5) and model.flat_features == 400


def test_resnet_stems() -> None:
    small = build_model("resnet18", input_size=64)
    large = build_model("resnet18", input_size=96).eval()
    assert isinstance(small, M.PreActResNet) and isinstance(large, M.PreActResNet)
    assert not any(isinstance(m, nn.MaxPool2d) for m in small.modules())
    with count_gate_calls(large) as counts, torch.no_grad():
        assert large(torch.rand(2, 3, 96, 96)).shape == (2, 10)
    assert _type_counts(counts) == {"ReLU": 2 * 8 + 1 + 1, "MaxPool2d": 1}
    r20 = build_model("resnet20")
    shortcuts = [b.shortcut for b in r20.modules() if isinstance(b, M.PreActBlock)]
    assert sum(s is not None for s in shortcuts) == 2  # 1x1 projections at 16->32, 32->64


# ---------------------------------------------------------------------------
# Gating layers
# ---------------------------------------------------------------------------


def _cheap_input(name: str) -> tuple[int, int]:
    """(channels, side) for counting gates: the default input, smaller for big models.

    The number of gating calls does not depend on the input size (ResNet-18/34
    keep their 3x3 stem for every side <= 64).
    """
    c, h, _ = get_spec(name).default_input
    if name in {"resmlp10", "vgg16", "vgg11_revised", "resnet18", "resnet34"}:
        return 1, 16
    return c, h


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_gating_layer_counts(name: str) -> None:
    c, h = _cheap_input(name)
    model = build_model(name, in_channels=c, input_size=h).train()
    with count_gate_calls(model) as counts, torch.no_grad():
        model(torch.rand(3, c, h, h))
    assert _type_counts(counts) == EXPECTED_GATES[name]
    # one module per gating layer: no module is called twice
    assert all(v == 1 for k, v in counts.items() if k.startswith("name:"))


def test_vae_classifier_gates_are_named() -> None:
    model = build_model("vae_classifier")
    with count_gate_calls(model) as counts:
        model(torch.rand(2, *MNIST))
    classifier = sorted(k for k in counts if k.startswith("name:classifier."))
    assert classifier == ["name:classifier.relu1", "name:classifier.relu2"]


@pytest.mark.parametrize(
    ("name", "kwargs", "n_relu"),
    [
        ("task_mlp", {"n_relu": 0}, 0),
        ("task_mlp", {"n_relu": 5}, 5),
        ("target_mlp", {"n_relu": 12}, 12),
        ("target_mlp", {"n_relu": 6, "residual": True}, 6),
        ("target_mlp", {"n_relu": 6, "residual": True, "in_features": 784}, 6),
        ("resmlp10", {"depth": 4, "in_features": 16}, 3),
    ],
)
def test_depth_kwargs_set_relu_count(name: str, kwargs: dict[str, Any], n_relu: int) -> None:
    model = build_model(name, **kwargs)
    n_in = kwargs.get("in_features", 1024)
    with count_gate_calls(model) as counts:
        assert model(torch.rand(2, n_in)).shape == (2, 10)
    assert counts["ReLU"] == n_relu


@contextmanager
def count_functional_gates(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Count the low-level ReLU / max-pool ops, whoever calls them."""
    counts: Counter[str] = Counter()

    def wrap(owner: Any, attr: str, key: str) -> None:
        original = getattr(owner, attr)

        def counted(*args: Any, **kwargs: Any) -> Any:
            counts[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, attr, counted)

    wrap(torch, "relu", "relu")
    wrap(torch, "relu_", "relu")
    wrap(torch.Tensor, "relu", "tensor_relu")
    wrap(torch.Tensor, "relu_", "tensor_relu")
    wrap(torch, "clamp_min", "clamp")
    wrap(torch.Tensor, "clamp_min", "clamp")
    wrap(torch.nn.functional, "max_pool2d", "maxpool")
    wrap(torch.nn.functional, "max_pool1d", "maxpool")
    wrap(torch.nn.functional, "dropout", "dropout")
    yield counts


def test_functional_counter_sees_a_hidden_relu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check below would catch an ``F.relu`` that no hook can see."""

    class Hidden(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.relu = nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            return self.relu(nn.functional.relu(self.fc(x)))

    model = Hidden()
    with count_gate_calls(model) as modules, count_functional_gates(monkeypatch) as ops:
        model(torch.rand(2, 4))
    assert (modules["ReLU"], ops["relu"]) == (1, 2)


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_no_functional_gate_hides_outside_a_module(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ReLU / max-pool / dropout op of a forward comes from a gating module call."""
    c, h = _cheap_input(name)
    model = build_model(name, in_channels=c, input_size=h).train()
    x = torch.rand(2, c, h, h)
    with count_gate_calls(model) as modules, count_functional_gates(monkeypatch) as ops, torch.no_grad():
        model(x)
    assert ops["relu"] == modules["ReLU"]
    assert ops["maxpool"] == modules["MaxPool2d"]
    assert ops["dropout"] == modules["Dropout"]
    assert ops["tensor_relu"] == 0 and ops["clamp"] == 0


# ---------------------------------------------------------------------------
# Section 4.2 task MLPs, target MLPs, residual blocks
# ---------------------------------------------------------------------------


def test_task_mlp_is_a_fixed_seeded_function() -> None:
    x = torch.rand(4, 1, 32, 32)
    a, b = M.TaskMLP(3, seed=1), M.TaskMLP(3, seed=1)
    other = M.TaskMLP(3, seed=2)
    assert torch.equal(a(x), b(x))
    assert not torch.allclose(a(x), other(x))
    assert not any(p.requires_grad for p in a.parameters())
    a.train()
    assert not a.training and not any(m.training for m in a.modules())
    std = a.layers.fc1.weight.std().item()
    assert std == pytest.approx((2 / 1024) ** 0.5, rel=0.02)


def test_task_mlp_zero_relu_is_linear() -> None:
    task = M.TaskMLP(0, seed=3)
    linears = [m for m in task.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].weight.shape == (10, 1024)
    x = torch.randn(5, 1024)
    assert torch.allclose(task(x), x @ linears[0].weight.T)


def test_residual_block_computes_relu_of_x_plus_wx() -> None:
    block = M.ResidualFCBlock(3)
    w = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.0, -1.0], [0.0, 1.0, 1.0]])
    with torch.no_grad():
        block.fc.weight.copy_(w)
    x = torch.tensor([[1.0, 1.0, 1.0], [2.0, -1.0, 0.5]])
    assert block.fc.bias is None
    assert torch.allclose(block(x), torch.relu(x + x @ w.T))
    assert torch.allclose(block(x)[0], torch.tensor([0.0, 0.5, 3.0]))


def test_resmlp_structure() -> None:
    model = M.ResMLP(in_features=32, depth=10)
    assert len(model.blocks) == 9 and all(isinstance(b, M.ResidualFCBlock) for b in model.blocks)
    assert model.fc.weight.shape == (10, 32) and model.fc.bias is None
    assert build_model("resmlp10", in_features=784, init="torch_default").fc.in_features == 784


def test_target_mlp_residual_skips_only_square_layers() -> None:
    square = M.TargetMLP(6, residual=True)
    assert all(isinstance(b, M.ResidualFCBlock) for b in square.blocks)
    wide_in = M.TargetMLP(6, in_features=784, residual=True)
    assert not isinstance(wide_in.blocks[0], M.ResidualFCBlock)
    assert all(isinstance(b, M.ResidualFCBlock) for b in list(wide_in.blocks)[1:])
    plain = M.TargetMLP(6)
    assert not any(isinstance(m, M.ResidualFCBlock) for m in plain.modules())
    assert sum(isinstance(m, nn.Linear) for m in plain.modules()) == 7


def test_target_mlp_scaled_residual_init_keeps_deep_outputs_at_the_input_scale() -> None:
    x = torch.rand(256, 784)

    def rms(depth: int, init: str) -> float:
        torch.manual_seed(0)
        model = M.TargetMLP(depth, in_features=784, residual=True, init=init)
        with torch.no_grad():
            return float(model(x).pow(2).mean().sqrt())

    # kaiming-normal skip blocks grow the output geometrically with depth; the scaled init does not
    kaiming = [rms(d, "kaiming_normal") for d in (6, 24)]
    scaled = [rms(d, "scaled_residual") for d in (6, 24)]
    assert kaiming[1] > 100 * kaiming[0]
    assert max(scaled) < 5.0 and scaled[1] < 3 * scaled[0]
    # only the skip blocks' W are scaled, by 1 / sqrt(blocks); the first (784 -> 1024) and output FC are not
    torch.manual_seed(0)
    ref = M.TargetMLP(6, in_features=784, residual=True)
    torch.manual_seed(0)
    scaled_model = M.TargetMLP(6, in_features=784, residual=True, init="scaled_residual")
    assert torch.equal(ref.blocks[0].fc.weight, scaled_model.blocks[0].fc.weight)
    assert torch.equal(ref.fc_out.weight, scaled_model.fc_out.weight)
    for a, b in zip(list(ref.blocks)[1:], list(scaled_model.blocks)[1:]):
        assert torch.allclose(b.fc.weight, a.fc.weight / 5 ** 0.5)
    # a stacked target has no skip block: the init changes nothing
    torch.manual_seed(0)
    plain = M.TargetMLP(6, in_features=784)
    torch.manual_seed(0)
    plain_scaled = M.TargetMLP(6, in_features=784, init="scaled_residual")
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), plain_scaled.parameters()))
    with pytest.raises(ValueError, match="init must be"):
        M.TargetMLP(6, residual=True, init="xavier")


# ---------------------------------------------------------------------------
# VAE sampling switch (Eq. 3)
# ---------------------------------------------------------------------------


def test_vae_sampling_switch() -> None:
    torch.manual_seed(0)
    model = build_model("vae_classifier").train()
    assert isinstance(model, M.VAEClassifier) and model.tcomplex_sampling is True
    x = torch.rand(4, *MNIST)
    first, second = model(x), model(x)
    assert not torch.allclose(first.logits, second.logits)
    assert torch.equal(first.mu, second.mu)

    model.tcomplex_sampling = False
    first, second = model(x), model(x)
    assert torch.equal(first.logits, second.logits)
    assert torch.equal(first.reconstruction, second.reconstruction)
    assert torch.allclose(first.logits, model.classifier(first.mu))
    assert 0.0 <= first.reconstruction.min() and first.reconstruction.max() <= 1.0
