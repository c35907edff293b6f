"""Every network of the paper, by name, with its widths in plain sight.

"Understanding, analyzing, and optimizing the complexity of deep models"
measures the gating states of ReLU, max-pool and dropout layers
(Section 3, Appendix A).  The gate recorder (:mod:`tcomplex.gating`) finds
those layers with forward hooks on *modules*, so every model here follows two
rules:

* every ReLU is an ``nn.ReLU`` module call (never ``F.relu``/``torch.relu``),
  every max-pool an ``nn.MaxPool2d`` module and every dropout an ``nn.Dropout``
  module; each gating layer has its own module, so its qualified name
  (``layers.relu2``, ``stages.0.1.relu1``, ``classifier.relu1``) reads well;
* no ReLU is in-place, so the input of a gate is never overwritten.

Use :func:`build_model` with a registry name and :func:`list_models` for the
names; :func:`get_spec` returns the :class:`ModelSpec` (family, default input,
where the paper defines the model, widths).  The registry, in the paper's
order (gates = gating-layer calls per forward pass)::

    name            architecture                                      gates
    mlp_mnist       FC 784-1024-256-128-64-10, no bias                4 ReLU
    mlp_alpha       FC 784-1024-1024-512-512-256-256-128-128-64-16-10 10 ReLU
    mlp_beta        FC 784-1024-256-120-84-10 (footnote 5)            4 ReLU
    mlp_cifar10     FC 3072-1024-256-128-64-10                        4 ReLU
    lenet5          conv6-pool-conv16-pool-FC 400-120-84-10           4 ReLU, 2 max-pool
    vgg11_revised   VGG-11 convs + BN, FC 512-512 (Jastrzebski)       10 ReLU, 5 max-pool, 2 dropout
    vgg16           VGG-16 (config D) + BN, FC 4096-4096              15 ReLU, 5 max-pool, 2 dropout
    resnet20        pre-act, blocks [3,3,3], 16-32-64                 19 ReLU
    resnet32        pre-act, blocks [5,5,5], 16-32-64                 31 ReLU
    resnet18        pre-act, blocks [2,2,2,2], 64-128-256-512         17 ReLU (7x7 stem: 18 ReLU, 1 max-pool)
    resnet34        pre-act, blocks [3,4,6,3], 64-128-256-512         33 ReLU (7x7 stem: 34 ReLU, 1 max-pool)
    resmlp10        9 x ReLU(x + W x), d = 3072, then FC d-10         9 ReLU
    task_mlp        n x (FC 1024 + ReLU), FC 1024-10, fixed random    n ReLU
    target_mlp      n x (FC 1024 + ReLU), FC 1024-10, opt. residual   n ReLU
    vae_classifier  VAE 784-400-20, classifier 20-256-128-10          4 ReLU (2 named classifier.*)

Dropout is a gating layer only in training mode.

A pre-activation ResNet with ``b`` basic blocks has ``2 b + 1`` ReLU calls:
two per block (BN-ReLU before each 3x3 conv) and the final BN-ReLU before the
global average pool; the CIFAR stem is a bare conv without a ReLU.

Where the paper is silent we chose, and say so in the class docstrings: the
widths of the VAE, the output width of the task MLPs, biases of the Section
4.2 MLPs, the 1x1-conv projection shortcut of the ResNets, and the padding of
28x28 inputs for LeNet-5 and the VGGs.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "MLP_MNIST_WIDTHS",
    "MLP_ALPHA_WIDTHS",
    "MLP_BETA_WIDTHS",
    "MLP_CIFAR10_WIDTHS",
    "LENET5_CONV_CHANNELS",
    "LENET5_FC_WIDTHS",
    "VGG11_PLAN",
    "VGG16_PLAN",
    "VGG11_REVISED",
    "VGG16_BN",
    "CIFAR_RESNET_WIDTHS",
    "IMAGENET_RESNET_WIDTHS",
    "RESNET_BLOCKS",
    "RESMLP_DEPTH",
    "TASK_MLP_DEPTHS",
    "TARGET_MLP_DEPTHS",
    "SECTION42_WIDTH",
    "TARGET_MLP_INITS",
    "SECTION42_IN_FEATURES",
    "SECTION42_OUT_FEATURES",
    "VAE_HIDDEN",
    "VAE_LATENT",
    "VAE_CLASSIFIER_WIDTHS",
    "MLP",
    "LeNet5",
    "VGGConfig",
    "VGG",
    "PreActBlock",
    "PreActResNet",
    "ResidualFCBlock",
    "ResMLP",
    "TaskMLP",
    "TargetMLP",
    "VAEOutput",
    "VAEClassifier",
    "ModelSpec",
    "build_model",
    "get_spec",
    "list_models",
]

# ---------------------------------------------------------------------------
# Widths, in the paper's words (Section 4.4 unless said otherwise)
# ---------------------------------------------------------------------------

#: MLP-MNIST: "5 FC layers with the width of 784-1024-256-128-64-10".
MLP_MNIST_WIDTHS: tuple[int, ...] = (784, 1024, 256, 128, 64, 10)
#: MLP-alpha: 11 FC layers.
MLP_ALPHA_WIDTHS: tuple[int, ...] = (784, 1024, 1024, 512, 512, 256, 256, 128, 128, 64, 16, 10)
#: MLP-beta: MLP-MNIST whose last three FC layers match LeNet-5's (footnote 5).
MLP_BETA_WIDTHS: tuple[int, ...] = (784, 1024, 256, 120, 84, 10)
#: MLP-CIFAR10.
MLP_CIFAR10_WIDTHS: tuple[int, ...] = (3072, 1024, 256, 128, 64, 10)

#: LeNet-5 (LeCun et al., 1998): two 5x5 convs and three FC layers.
LENET5_CONV_CHANNELS: tuple[int, int] = (6, 16)
LENET5_FC_WIDTHS: tuple[int, int, int, int] = (400, 120, 84, 10)

#: VGG conv plans (Simonyan & Zisserman): an int is a 3x3 conv with that many
#: output channels (+BN +ReLU), "M" a 2x2 max-pool.  Config A (VGG-11), D (VGG-16).
VGG11_PLAN: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
VGG16_PLAN: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)

#: Pre-activation ResNets: channels per stage and basic blocks per stage.
CIFAR_RESNET_WIDTHS: tuple[int, ...] = (16, 32, 64)
IMAGENET_RESNET_WIDTHS: tuple[int, ...] = (64, 128, 256, 512)
RESNET_BLOCKS: dict[str, tuple[int, ...]] = {
    "resnet20": (3, 3, 3),  # 6n + 2 layers, n = 3
    "resnet32": (5, 5, 5),  # n = 5
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}

#: Residual MLP of Section 4.3 (footnote 4): 10 FC layers, 9 ReLU layers.
RESMLP_DEPTH = 10

#: Section 4.2, "maximum complexity": task MLPs with n = 0..31 ReLU layers and
#: target MLPs with 6, 12, 18, 24 ReLU layers, all FC layers 1024 wide.
TASK_MLP_DEPTHS: tuple[int, ...] = tuple(range(32))
TARGET_MLP_DEPTHS: tuple[int, ...] = (6, 12, 18, 24)
#: initialisations of a target MLP (:class:`TargetMLP`'s ``init``; the second scales residual branches)
TARGET_MLP_INITS: tuple[str, ...] = ("kaiming_normal", "scaled_residual")
SECTION42_WIDTH = 1024
#: Input: a CIFAR-10 image in grey scale, 32 x 32 = 1024 values.
SECTION42_IN_FEATURES = 32 * 32
#: Output width of task and target MLPs: the paper does not state it; our choice.
SECTION42_OUT_FEATURES = 10

#: VAE of Section 4.2 / Figure 6: the paper gives no widths.  Hidden 400 and
#: latent 20 are those of the classic MNIST VAE (PyTorch examples); the
#: classifier widths are ours.
VAE_HIDDEN = 400
VAE_LATENT = 20
VAE_CLASSIFIER_WIDTHS: tuple[int, int] = (256, 128)


def _kaiming_normal_linears(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """Kaiming-normal weights (fan-in, ReLU gain) and zero biases for every Linear.

    This is the authors' ``_weights_init`` (``init.kaiming_normal_(m.weight)``).
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------
# MLPs (Section 4.4, footnote 5)
# ---------------------------------------------------------------------------


class MLP(nn.Module):
    """Plain stacked MLP: FC -> ReLU -> ... -> FC, input flattened.

    Defines MLP-MNIST, MLP-alpha, MLP-beta and MLP-CIFAR10 of Section 4.4
    (MLP-beta: footnote 5).  As in the authors' ``models/mlp.py`` the FC layers
    have no bias and kaiming-normal weights.  ``widths = (d_0, ..., d_L)`` gives
    ``L`` FC layers and ``L - 1`` ReLU layers named ``layers.relu1`` ...; the
    FC layers are ``layers.fc1`` ... (the authors reuse one ``self.relu``; we
    give each gating layer its own module).
    """

    def __init__(self, widths: Sequence[int], bias: bool = False) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"an MLP needs at least an input and an output width, got {widths}")
        self.widths: tuple[int, ...] = tuple(int(w) for w in widths)
        n_fc = len(self.widths) - 1
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i in range(1, n_fc + 1):
            layers[f"fc{i}"] = nn.Linear(self.widths[i - 1], self.widths[i], bias=bias)
            if i < n_fc:
                layers[f"relu{i}"] = nn.ReLU()
        self.layers = nn.Sequential(layers)
        _kaiming_normal_linears(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x.flatten(1))


# ---------------------------------------------------------------------------
# LeNet-5
# ---------------------------------------------------------------------------


def _lenet_padding(input_size: int) -> int:
    """Padding of the first conv that brings an input smaller than 32 to 32."""
    return max(0, (32 - input_size) // 2)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998) with ReLU and max-pooling, Section 4.4.

    conv(in, 6, 5) -> ReLU -> MaxPool(2) -> conv(6, 16, 5) -> ReLU -> MaxPool(2)
    -> FC 400-120 -> ReLU -> FC 120-84 -> ReLU -> FC 84-10: 4 ReLU and 2
    max-pool gating layers.  The first conv is padded so that a 28x28 input is
    treated like the 32x32 input of the original (padding 2, as in the classic
    MNIST LeNet); both give a 16x5x5 = 400 flatten.  For other sizes the flatten
    width is computed from ``input_size``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> None:
        super().__init__()
        c1, c2 = LENET5_CONV_CHANNELS
        _, h1, h2, _ = LENET5_FC_WIDTHS
        padding = _lenet_padding(input_size)
        side = (input_size + 2 * padding - 4) // 2  # conv1 (5x5) then pool1
        side = (side - 4) // 2  # conv2 (5x5) then pool2
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for LeNet-5")
        self.flat_features = c2 * side * side
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=5, padding=padding)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(self.flat_features, h1)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(h1, h2)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(x.flatten(1)))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


# ---------------------------------------------------------------------------
# VGG
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VGGConfig:
    """Everything that tells one VGG from another.

    Attributes
    ----------
    plan: conv plan; an int is a 3x3 conv (+BN +ReLU) with that many channels,
        ``"M"`` a 2x2 max-pool.
    fc_widths: hidden FC widths of the classifier (each FC is followed by ReLU).
    fc_batchnorm: BatchNorm1d between each hidden FC and its ReLU.
    dropout: dropout probability in the classifier (0 gives no Dropout modules).
    dropout_before_fc: ``True``: dropout on the input of each hidden FC
        (Jastrzebski et al.'s code); ``False``: after each hidden ReLU
        (torchvision / Simonyan & Zisserman).
    input_batchnorm: a BatchNorm2d on the input image.
    """

    plan: tuple[int | str, ...]
    fc_widths: tuple[int, ...]
    fc_batchnorm: bool = False
    dropout: float = 0.5
    dropout_before_fc: bool = False
    input_batchnorm: bool = False

    @property
    def n_pools(self) -> int:
        return sum(1 for item in self.plan if item == "M")


#: The revised VGG-11 of Jastrzebski et al. (2017, "Three factors influencing
#: minima in SGD").  Their paper names only "VGG-11" on CIFAR-10; the layers
#: are taken from the first author's public VGG-11 for CIFAR-10
#: (github.com/kudkudak/dnn_sharpest_directions, src/models/vgg.py and
#: src/configs/vgg_configs.py, Jastrzebski et al., 2019), which says it follows
#: chengyangfu/pytorch-vgg-cifar10 with more batch norm.  Changes from VGG-11:
#: BN on the input image and after every conv; the 4096-4096 classifier becomes
#: two FC layers of 512 (flatten of 512x1x1 at 32x32), each FC -> BN -> ReLU
#: with dropout 0.5 on its input; then FC 512 -> classes.
VGG11_REVISED = VGGConfig(
    plan=VGG11_PLAN,
    fc_widths=(512, 512),
    fc_batchnorm=True,
    dropout=0.5,
    dropout_before_fc=True,
    input_batchnorm=True,
)
#: VGG-16 (config D) with BN after every conv and the original 4096-4096
#: classifier with dropout 0.5 (torchvision ``vgg16_bn``).
VGG16_BN = VGGConfig(plan=VGG16_PLAN, fc_widths=(4096, 4096), dropout=0.5)


class VGG(nn.Module):
    """VGG network (Simonyan & Zisserman, 2015) built from a :class:`VGGConfig`.

    Used for the revised VGG-11 (MNIST / CIFAR-10, Section 4.4, after
    Jastrzebski et al., 2017, see :data:`VGG11_REVISED`) and VGG-16 (CelebA,
    Pascal VOC 2012 and Tiny ImageNet crops, Section 4.4 and Appendix G).

    The five max-pools need a side that is a multiple of 32: a smaller or odd
    input (MNIST's 28x28) is zero-padded to the next multiple of 32 by a
    ``nn.ZeroPad2d`` at the start.  The classifier is sized for the input: an
    ``nn.AdaptiveAvgPool2d`` to ``k x k`` with ``k = padded side / 32`` (1 for
    32x32, 2 for 64x64 crops, 7 for 224x224 as in torchvision), then
    FC ``512 k^2 -> fc_widths -> num_classes``.

    Gating layers: one ReLU per conv and per hidden FC, one max-pool per "M"
    and (in training mode) one dropout per hidden FC.
    """

    def __init__(
        self,
        config: VGGConfig,
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        self.config = config
        scale = 2**config.n_pools
        padded = -(-input_size // scale) * scale
        pad = padded - input_size
        self.pad: nn.Module = (
            nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)) if pad else nn.Identity()
        )

        features: OrderedDict[str, nn.Module] = OrderedDict()
        if config.input_batchnorm:
            features["input_bn"] = nn.BatchNorm2d(in_channels)
        channels, n_conv, n_pool = in_channels, 0, 0
        for item in config.plan:
            if item == "M":
                n_pool += 1
                features[f"pool{n_pool}"] = nn.MaxPool2d(2)
            else:
                n_conv += 1
                out = int(item)
                features[f"conv{n_conv}"] = nn.Conv2d(channels, out, kernel_size=3, padding=1)
                features[f"bn{n_conv}"] = nn.BatchNorm2d(out)
                features[f"relu{n_conv}"] = nn.ReLU()
                channels = out
        self.features = nn.Sequential(features)

        side = padded // scale
        self.avgpool = nn.AdaptiveAvgPool2d(side)
        classifier: OrderedDict[str, nn.Module] = OrderedDict()
        width = channels * side * side
        for i, hidden in enumerate(config.fc_widths, start=1):
            if config.dropout > 0 and config.dropout_before_fc:
                classifier[f"dropout{i}"] = nn.Dropout(config.dropout)
            classifier[f"fc{i}"] = nn.Linear(width, hidden)
            if config.fc_batchnorm:
                classifier[f"bn{i}"] = nn.BatchNorm1d(hidden)
            classifier[f"relu{i}"] = nn.ReLU()
            if config.dropout > 0 and not config.dropout_before_fc:
                classifier[f"dropout{i}"] = nn.Dropout(config.dropout)
            width = hidden
        classifier[f"fc{len(config.fc_widths) + 1}"] = nn.Linear(width, num_classes)
        self.classifier = nn.Sequential(classifier)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's VGG initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(self.pad(x))
        return self.classifier(self.avgpool(x).flatten(1))


# ---------------------------------------------------------------------------
# Pre-activation ResNets (He et al., 2016b)
# ---------------------------------------------------------------------------


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al., 2016b, "Identity mappings").

    ``out = conv2(relu2(bn2(conv1(relu1(bn1(x)))))) + shortcut(x)``, two ReLU
    gating layers (``relu1``, ``relu2``).  When the shape changes (stride 2 or
    more channels) the shortcut is a 1x1 strided convolution (a projection
    only where dimensions grow: option B of He et al., 2016a) applied to the
    pre-activated input ``relu1(bn1(x))``; otherwise it is the identity.  We
    chose the projection over option A's zero padding; the paper does not say.
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu1(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + skip


class PreActResNet(nn.Module):
    """Pre-activation ResNet (He et al., 2016b) used in Sections 4.1, 4.3, 4.4.

    * ResNet-20/32 (CIFAR-10, MNIST): 3x3 stem conv with ``widths[0]`` = 16
      channels, three stages of 16/32/64 channels with n = 3 / 5 blocks.
    * ResNet-18/34 (Tiny ImageNet, VOC and CelebA crops): stages of
      64/128/256/512 channels with [2,2,2,2] / [3,4,6,3] blocks.  For inputs up
      to 64x64 the stem is a 3x3 stride-1 conv without max-pool
      (``stem="cifar"``); for larger inputs the ImageNet stem 7x7/2 conv -> BN ->
      ReLU -> 3x3/2 max-pool (``stem="imagenet"``).

    The first stage keeps the resolution, every later stage halves it.  After
    the last stage: BN -> ReLU -> global average pool -> FC.  ReLU calls per
    forward: 2 per block + 1 final (+1 and a max-pool with the ImageNet stem).
    """

    def __init__(
        self,
        blocks: Sequence[int],
        widths: Sequence[int],
        in_channels: int = 3,
        num_classes: int = 10,
        stem: Literal["cifar", "imagenet"] = "cifar",
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError(f"blocks {blocks} and widths {widths} differ in length")
        self.blocks: tuple[int, ...] = tuple(blocks)
        self.widths: tuple[int, ...] = tuple(widths)
        if stem == "cifar":
            self.stem = nn.Sequential(
                OrderedDict(conv=nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False))
            )
        elif stem == "imagenet":
            self.stem = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False),
                    bn=nn.BatchNorm2d(widths[0]),
                    relu=nn.ReLU(),
                    pool=nn.MaxPool2d(3, stride=2, padding=1),
                )
            )
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")

        channels = widths[0]
        self.stages = nn.ModuleList()
        for index, (n_blocks, width) in enumerate(zip(blocks, widths)):
            stride = 1 if index == 0 else 2
            stage = []
            for b in range(n_blocks):
                stage.append(PreActBlock(channels, width, stride if b == 0 else 1))
                channels = width
            self.stages.append(nn.Sequential(*stage))
        self.final_bn = nn.BatchNorm2d(channels)
        self.final_relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's ResNet initialisation (Linear keeps PyTorch's default).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        x = self.final_relu(self.final_bn(x))
        return self.fc(self.avgpool(x).flatten(1))


# ---------------------------------------------------------------------------
# Residual MLP (Section 4.3, footnote 4)
# ---------------------------------------------------------------------------


class ResidualFCBlock(nn.Module):
    """``out = ReLU(x + W x)`` with ``W`` a square FC layer (``bias`` off by default)."""

    def __init__(self, width: int, bias: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width, bias=bias)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(x + self.fc(x))


class ResMLP(nn.Module):
    """Residual MLP of Section 4.3 (footnote 4), the authors' ``resmlp10``.

    ``depth`` FC layers (10 in the paper) and ``depth - 1`` ReLU layers: the
    first ``depth - 1`` are :class:`ResidualFCBlock` s ``ReLU(x + W x)`` of
    width ``in_features`` ("both the input and features are 3072-d vectors";
    784 on MNIST), the last is ``Linear(in_features, num_classes, bias=False)``.
    Block ``i`` is ``blocks.i`` and its gate ``blocks.i.relu``.

    ``init="kaiming_normal"`` (default) gives every FC kaiming-normal weights,
    as ``_weights_init`` in the authors' ``models/resmlp.py`` would; note that
    their ``ResMLP`` defines that function but never applies it, so their runs
    used PyTorch's default ``Linear`` init, which ``init="torch_default"``
    reproduces.
    """

    def __init__(
        self,
        in_features: int = 3072,
        depth: int = RESMLP_DEPTH,
        num_classes: int = 10,
        init: Literal["kaiming_normal", "torch_default"] = "kaiming_normal",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.in_features = in_features
        self.depth = depth
        self.blocks = nn.Sequential(*(ResidualFCBlock(in_features) for _ in range(depth - 1)))
        self.fc = nn.Linear(in_features, num_classes, bias=False)
        if init == "kaiming_normal":
            _kaiming_normal_linears(self)
        elif init != "torch_default":
            raise ValueError(f"init must be 'kaiming_normal' or 'torch_default', got {init!r}")

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.blocks(x.flatten(1)))


# ---------------------------------------------------------------------------
# Section 4.2: task MLPs and target MLPs
# ---------------------------------------------------------------------------


def _stacked_relu_layers(
    n_relu: int, in_features: int, width: int, bias: bool
) -> OrderedDict[str, nn.Module]:
    """``fc1, relu1, ..., fc{n}, relu{n}``: FC layers of ``width``, the first from ``in_features``."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(1, n_relu + 1):
        layers[f"fc{i}"] = nn.Linear(in_features if i == 1 else width, width, bias=bias)
        layers[f"relu{i}"] = nn.ReLU()
    return layers


class TaskMLP(nn.Module):
    """Task MLP of Section 4.2 ("maximum complexity"): a fixed random function.

    ``n_relu`` times FC(width 1024) -> ReLU, then an FC to ``out_features``;
    ``n_relu = 0`` is a single linear map ``in_features -> out_features``.  The
    paper uses n = 0, 1, ..., 31 on CIFAR-10 images turned grey (1x32x32, so
    ``in_features = 1024``; the caller converts, the forward flattens).

    Weights are kaiming-normal drawn from a ``torch.Generator`` seeded with
    ``seed``, so a seed fixes the task; the FC layers have no bias (the paper is
    silent; no bias as in the authors' MLPs).  Nothing is trainable
    (``requires_grad_(False)``) and the module is always in eval mode.  The
    paper does not state the output width: 10 (:data:`SECTION42_OUT_FEATURES`)
    is our choice.
    """

    def __init__(
        self,
        n_relu: int,
        width: int = SECTION42_WIDTH,
        in_features: int = SECTION42_IN_FEATURES,
        out_features: int = SECTION42_OUT_FEATURES,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if n_relu < 0:
            raise ValueError(f"n_relu must be >= 0, got {n_relu}")
        self.n_relu, self.seed = n_relu, seed
        layers = _stacked_relu_layers(n_relu, in_features, width, bias=False)
        layers[f"fc{n_relu + 1}"] = nn.Linear(width if n_relu else in_features, out_features, bias=False)
        self.layers = nn.Sequential(layers)
        _kaiming_normal_linears(self, generator=torch.Generator().manual_seed(seed))
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> TaskMLP:
        """Always eval: a task MLP is a fixed function."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x.flatten(1))


class TargetMLP(nn.Module):
    """Target MLP of Section 4.2, trained to mimic a task MLP with an MSE loss.

    ``n_relu`` (6, 12, 18 or 24 in the paper) times FC(width 1024) -> ReLU,
    then an FC to ``out_features`` (10, our choice, matching :class:`TaskMLP`).
    Named ``blocks.fc1``, ``blocks.relu1``, ... (plain) or ``blocks.i.fc``,
    ``blocks.i.relu`` (residual).

    ``residual=True`` gives the paper's "residual MLPs": "a skip-connection to
    each FC layer", i.e. ``out = ReLU(x + FC(x))`` for every hidden FC whose
    input and output widths are equal.  The first hidden layer maps
    ``in_features -> 1024`` and has a skip only when ``in_features == width``
    (true for the paper's grey 32x32 input); otherwise it is ``ReLU(FC(x))``.
    The output FC never has a skip.  FC layers have no bias by default, like
    the residual MLP of Section 4.3 that the paper says is "similar"; weights
    are kaiming-normal.

    ``init="kaiming_normal"`` (default) draws every FC kaiming-normal.  With
    skips, each block ``ReLU(x + W x)`` then multiplies the mean square of its
    activations by about 2, so a 24-block target starts with outputs ~10^4
    times the task's scale and two epochs do not bring it back (held-out R²
    below 0).  ``init="scaled_residual"`` multiplies the kaiming-normal ``W`` of
    every skip block by ``1 / sqrt(number of skip blocks)`` (the residual-branch
    scaling of Hanin & Rolnick 2018 and Fixup), so the mean square grows by at
    most ~(1 + 2/L)^L ≈ e^2 over the whole network whatever its depth; the
    architecture and its gates are unchanged.  Stacked targets ignore it.
    """

    def __init__(
        self,
        n_relu: int,
        width: int = SECTION42_WIDTH,
        in_features: int = SECTION42_IN_FEATURES,
        out_features: int = SECTION42_OUT_FEATURES,
        residual: bool = False,
        bias: bool = False,
        init: Literal["kaiming_normal", "scaled_residual"] = "kaiming_normal",
    ) -> None:
        super().__init__()
        if n_relu < 1:
            raise ValueError(f"n_relu must be >= 1, got {n_relu}")
        if init not in TARGET_MLP_INITS:
            raise ValueError(f"init must be one of {TARGET_MLP_INITS}, got {init!r}")
        self.n_relu, self.residual, self.init = n_relu, residual, init
        if residual:
            blocks: list[nn.Module] = []
            if in_features != width:
                first = OrderedDict(fc=nn.Linear(in_features, width, bias=bias), relu=nn.ReLU())
                blocks.append(nn.Sequential(first))
            while len(blocks) < n_relu:
                blocks.append(ResidualFCBlock(width, bias=bias))
            self.blocks = nn.Sequential(*blocks)
        else:
            self.blocks = nn.Sequential(_stacked_relu_layers(n_relu, in_features, width, bias=bias))
        self.fc_out = nn.Linear(width, out_features, bias=bias)
        _kaiming_normal_linears(self)
        skips = [b for b in self.blocks if isinstance(b, ResidualFCBlock)]
        if init == "scaled_residual" and skips:
            with torch.no_grad():
                for b in skips:
                    b.fc.weight.mul_(1.0 / math.sqrt(len(skips)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(self.blocks(x.flatten(1)))


# ---------------------------------------------------------------------------
# VAE with a classifier (Section 4.2, Figure 6)
# ---------------------------------------------------------------------------


class VAEOutput(NamedTuple):
    """What :class:`VAEClassifier` returns."""

    logits: Tensor
    reconstruction: Tensor
    mu: Tensor
    logvar: Tensor


class VAEClassifier(nn.Module):
    """VAE plus classifier of Section 4.2 (Figure 6: H vs I(X; Sigma)).

    * encoder, two FC layers: ``in -> hidden`` (ReLU) ``-> 2 * latent``, split
      into mean and log-variance;
    * decoder, two FC layers: ``latent -> hidden`` (ReLU) ``-> in``, sigmoid;
    * classifier on the encoder's latent ``z`` ("a classifier with two FC layers
      and two ReLU layers after the encoder"): ``FC(latent -> 256) -> ReLU ->
      FC(256 -> 128) -> ReLU -> FC(128 -> classes)``.  We read the paper's two
      FC + two ReLU as the two gated hidden layers, whose gates Figure 6 plots,
      and add a linear read-out for the logits.  Gates: ``classifier.relu1``,
      ``classifier.relu2`` (plus ``encoder.relu``, ``decoder.relu``).

    ``z = mu + exp(logvar / 2) * eps`` when ``tcomplex_sampling`` is True
    (default), else ``z = mu``; decoder and classifier see the same ``z``.  The
    switch alone decides, not ``train()``/``eval()``: with sampling the gating
    states carry the noise (H(Sigma)), without it they are a function of X
    (I(X; Sigma), Eq. 3); the gate recorder turns it off for that measurement.
    Widths are not in the paper: hidden 400 and latent 20 as the classic MNIST
    VAE, classifier 256-128 our choice (:data:`VAE_CLASSIFIER_WIDTHS`); PyTorch's
    default initialisation.
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden: int = VAE_HIDDEN,
        latent: int = VAE_LATENT,
        classifier_widths: Sequence[int] = VAE_CLASSIFIER_WIDTHS,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        h1, h2 = classifier_widths
        self.in_features, self.latent = in_features, latent
        self.tcomplex_sampling: bool = True
        self.encoder = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(in_features, hidden),
                relu=nn.ReLU(),
                fc2=nn.Linear(hidden, 2 * latent),  # mean and log-variance
            )
        )
        self.decoder = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(latent, hidden),
                relu=nn.ReLU(),
                fc2=nn.Linear(hidden, in_features),
                sigmoid=nn.Sigmoid(),
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(latent, h1),
                relu1=nn.ReLU(),
                fc2=nn.Linear(h1, h2),
                relu2=nn.ReLU(),
                fc3=nn.Linear(h2, num_classes),
            )
        )

    def forward(self, x: Tensor) -> VAEOutput:
        mu, logvar = self.encoder(x.flatten(1)).chunk(2, dim=1)
        if self.tcomplex_sampling:
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        else:
            z = mu
        return VAEOutput(self.classifier(z), self.decoder(z), mu, logvar)


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

Family = Literal["mlp", "conv", "resnet", "vae", "task"]
Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    Attributes
    ----------
    name: registry name.
    family: ``"mlp"``, ``"conv"``, ``"resnet"``, ``"vae"`` or ``"task"``.
    default_input: (C, H, W) used when ``build_model`` is given none.
    paper_ref: where the paper defines or uses the model.
    architecture: widths or blocks, in words.
    builder: ``builder(in_channels, input_size, num_classes, **kwargs)``.
    """

    name: str
    family: Family
    default_input: tuple[int, int, int]
    paper_ref: str
    architecture: str
    builder: Builder = field(repr=False, compare=False)


def _flat_in(in_channels: int, input_size: int, kwargs: dict[str, Any]) -> int:
    """``in_features`` kwarg if given, else C * H * W of the (default) input."""
    return int(kwargs.pop("in_features", in_channels * input_size * input_size))


def _mlp_builder(widths: tuple[int, ...]) -> Builder:
    def build(in_channels: int, input_size: int, num_classes: int, **kwargs: Any) -> nn.Module:
        in_features = _flat_in(in_channels, input_size, kwargs)
        return MLP((in_features, *widths[1:-1], num_classes), **kwargs)

    return build


def _build_lenet5(in_channels: int, input_size: int, num_classes: int, **kwargs: Any) -> nn.Module:
    return LeNet5(in_channels, num_classes, input_size, **kwargs)


def _vgg_builder(config: VGGConfig) -> Builder:
    def build(in_channels: int, input_size: int, num_classes: int, **kwargs: Any) -> nn.Module:
        return VGG(config, in_channels, num_classes, input_size, **kwargs)

    return build


def _resnet_builder(name: str, widths: tuple[int, ...], max_small_input: int | None) -> Builder:
    """``max_small_input``: largest input side that gets the 3x3 stem (None: always)."""

    def build(in_channels: int, input_size: int, num_classes: int, **kwargs: Any) -> nn.Module:
        small = max_small_input is None or input_size <= max_small_input
        stem = kwargs.pop("stem", "cifar" if small else "imagenet")
        return PreActResNet(RESNET_BLOCKS[name], widths, in_channels, num_classes, stem=stem, **kwargs)

    return build


def _build_resmlp10(in_channels: int, input_size: int, num_classes: int, **kwargs: Any) -> nn.Module:
    return ResMLP(_flat_in(in_channels, input_size, kwargs), num_classes=num_classes, **kwargs)


def _build_task_mlp(in_channels: int, input_size: int, num_classes: int, **kwargs: Any) -> nn.Module:
    in_features = _flat_in(in_channels, input_size, kwargs)
    kwargs.setdefault("n_relu", 1)
    kwargs.setdefault("out_features", num_classes)
    return TaskMLP(in_features=in_features, **kwargs)


def _build_target_mlp(in_channels: int, input_size: int, num_classes: int, **kwargs: Any) -> nn.Module:
    in_features = _flat_in(in_channels, input_size, kwargs)
    kwargs.setdefault("n_relu", TARGET_MLP_DEPTHS[0])
    kwargs.setdefault("out_features", num_classes)
    return TargetMLP(in_features=in_features, **kwargs)


def _build_vae(in_channels: int, input_size: int, num_classes: int, **kwargs: Any) -> nn.Module:
    return VAEClassifier(_flat_in(in_channels, input_size, kwargs), num_classes=num_classes, **kwargs)


def _widths(ws: Sequence[int]) -> str:
    return "FC " + "-".join(str(w) for w in ws)


_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "mlp_mnist", "mlp", (1, 28, 28),
        paper_ref="Sec. 4.4 (MLP-MNIST); authors' models/mlp.py",
        architecture=_widths(MLP_MNIST_WIDTHS) + ", no bias",
        builder=_mlp_builder(MLP_MNIST_WIDTHS),
    ),
    ModelSpec(
        "mlp_alpha", "mlp", (1, 28, 28),
        paper_ref="Sec. 4.4 (MLP-alpha), Appendix H",
        architecture=_widths(MLP_ALPHA_WIDTHS) + ", no bias",
        builder=_mlp_builder(MLP_ALPHA_WIDTHS),
    ),
    ModelSpec(
        "mlp_beta", "mlp", (1, 28, 28),
        paper_ref="Sec. 4.4 (MLP-beta) and footnote 5; Sec. 4.1",
        architecture=_widths(MLP_BETA_WIDTHS) + ", no bias",
        builder=_mlp_builder(MLP_BETA_WIDTHS),
    ),
    ModelSpec(
        "mlp_cifar10", "mlp", (3, 32, 32),
        paper_ref="Sec. 4.4 (MLP-CIFAR10), Appendix G",
        architecture=_widths(MLP_CIFAR10_WIDTHS) + ", no bias",
        builder=_mlp_builder(MLP_CIFAR10_WIDTHS),
    ),
    ModelSpec(
        "lenet5", "conv", (1, 28, 28),
        paper_ref="Sec. 4.4 (LeCun et al., 1998); Sec. 4.1, Appendix G",
        architecture="conv5x5 6 - pool - conv5x5 16 - pool - FC 400-120-84-10",
        builder=_build_lenet5,
    ),
    ModelSpec(
        "vgg11_revised", "conv", (3, 32, 32),
        paper_ref="Sec. 4.4 (revised VGG-11 of Jastrzebski et al., 2017), Appendix G",
        architecture="input BN, VGG-11 (config A) convs with BN, FC 512-512 (BN, dropout 0.5)-classes",
        builder=_vgg_builder(VGG11_REVISED),
    ),
    ModelSpec(
        "vgg16", "conv", (3, 64, 64),
        paper_ref="Sec. 4.4 (VGG-16, Simonyan & Zisserman), Sec. 4.2, Appendix G",
        architecture="VGG-16 (config D) convs with BN, adaptive pool, FC 4096-4096 (dropout 0.5)-classes",
        builder=_vgg_builder(VGG16_BN),
    ),
    ModelSpec(
        "resnet20", "resnet", (3, 32, 32),
        paper_ref="Sec. 4.4, 4.1, 4.3 (pre-activation ResNet-20, He et al., 2016a;b)",
        architecture="3x3 stem 16, blocks [3,3,3], channels 16-32-64",
        builder=_resnet_builder("resnet20", CIFAR_RESNET_WIDTHS, None),
    ),
    ModelSpec(
        "resnet32", "resnet", (3, 32, 32),
        paper_ref="Sec. 4.4, 4.3 (pre-activation ResNet-32)",
        architecture="3x3 stem 16, blocks [5,5,5], channels 16-32-64",
        builder=_resnet_builder("resnet32", CIFAR_RESNET_WIDTHS, None),
    ),
    ModelSpec(
        "resnet18", "resnet", (3, 64, 64),
        paper_ref="Sec. 4.4, 4.3 (pre-activation ResNet-18), Appendix G",
        architecture="blocks [2,2,2,2], channels 64-128-256-512; 3x3 stem up to 64x64, else 7x7 + max-pool",
        builder=_resnet_builder("resnet18", IMAGENET_RESNET_WIDTHS, 64),
    ),
    ModelSpec(
        "resnet34", "resnet", (3, 64, 64),
        paper_ref="Sec. 4.4, 4.3 (pre-activation ResNet-34), Appendix G",
        architecture="blocks [3,4,6,3], channels 64-128-256-512; 3x3 stem up to 64x64, else 7x7 + max-pool",
        builder=_resnet_builder("resnet34", IMAGENET_RESNET_WIDTHS, 64),
    ),
    ModelSpec(
        "resmlp10", "mlp", (3, 32, 32),
        paper_ref="Sec. 4.3 and footnote 4; authors' models/resmlp.py",
        architecture="9 x ReLU(x + W x), W square d x d (d = 3072), FC d-classes, no bias",
        builder=_build_resmlp10,
    ),
    ModelSpec(
        "task_mlp", "task", (1, 32, 32),
        paper_ref="Sec. 4.2, maximum complexity (task MLPs, n = 0..31)",
        architecture="n x (FC 1024 + ReLU), FC 1024-10; fixed seeded random weights",
        builder=_build_task_mlp,
    ),
    ModelSpec(
        "target_mlp", "mlp", (1, 32, 32),
        paper_ref="Sec. 4.2, maximum complexity (target MLPs n = 6, 12, 18, 24; residual MLPs)",
        architecture="n x (FC 1024 + ReLU), FC 1024-10; residual=True: ReLU(x + FC x)",
        builder=_build_target_mlp,
    ),
    ModelSpec(
        "vae_classifier", "vae", (1, 28, 28),
        paper_ref="Sec. 4.2 and Figure 6 (VAE with a classifier)",
        architecture="encoder FC 784-400-2x20, decoder FC 20-400-784, classifier FC 20-256-128-10",
        builder=_build_vae,
    ),
)  # fmt: skip
_REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def list_models() -> list[str]:
    """Registry names, in the order of the table in this module's docstring."""
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; ValueError listing valid names if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(_REGISTRY)}") from None


def build_model(
    name: str,
    *,
    in_channels: int | None = None,
    num_classes: int = 10,
    input_size: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the registry model ``name``.

    ``in_channels`` and ``input_size`` (side of a square input) default to the
    spec's ``default_input``.  For models that flatten their input (MLPs,
    residual MLP, task/target MLPs, VAE) the input width is ``in_features``
    if given, else C * H * W of the input: e.g. ``build_model("mlp_cifar10",
    in_channels=1, input_size=28)`` or ``in_features=784`` gives an MLP-CIFAR10
    of widths 784-1024-256-128-64-10 for 1x28x28 offline data.  Other keyword
    arguments go to the model class (``depth`` for ``resmlp10``, ``n_relu``,
    ``seed``, ``residual`` for the Section 4.2 MLPs, ``stem`` for ResNets, ...).
    """
    spec = get_spec(name)
    c, s, _ = spec.default_input
    model = spec.builder(
        in_channels if in_channels is not None else c,
        input_size if input_size is not None else s,
        num_classes,
        **kwargs,
    )
    return model
