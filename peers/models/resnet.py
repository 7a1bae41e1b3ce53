"""ResNets in plain torch (He et al. 2016): the backbones of the vision tasks (SwAV).

Layouts:
  * `resnet18`: BasicBlock, stages [2, 2, 2, 2], widths 64-128-256-512, 512 features;
  * `resnet50`: Bottleneck (expansion 4), stages [3, 4, 6, 3], widths 64-128-256-512, 2048 features;
  * `tiny`: BasicBlock, stages [1, 1, 1], widths 16-32-64, 64 features, a 3x3 stride-1 stem and no
    max-pool, for 28x28 grey images (Fashion-MNIST) and CPU tests (see `ARCHS`).

The ImageNet layouts use the usual 7x7 stride-2 stem and 3x3 max-pool; `small_input=True` swaps
them for the 3x3 stride-1 stem (CIFAR-style) when images are 32 px or smaller. The network ends in
global average pooling and returns the feature vector (no classifier); `num_features` says its size.

Determinism: `build_resnet(arch, seed=s)` gives bitwise-identical parameters for equal `s` (the
build draws from a forked RNG, so the caller's global RNG is untouched). Init as torchvision's:
Kaiming-normal (fan_out) convolutions, BatchNorm weight 1 and bias 0, and the last BatchNorm of each
residual branch zeroed when `zero_init_residual` (each block starts as the identity).

    net = build_resnet("tiny", in_channels=1, seed=0)
    features = net(torch.rand(8, 1, 28, 28))   # (8, 64)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from swarm.errors import ConfigError

__all__ = ["ARCHS", "ResNet", "ResNetLayout", "BasicBlock", "Bottleneck", "build_resnet"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_planes, planes * self.expansion, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride, as in torchvision's "ResNet v1.5"), 1x1 expand x4 (ResNet-50+)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_planes, planes * self.expansion, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


@dataclass(frozen=True)
class ResNetLayout:
    """The architecture: block type, blocks per stage, stage widths, and the stem."""

    block: str                      # "basic" | "bottleneck"
    blocks: tuple[int, ...]
    widths: tuple[int, ...]
    small_input: bool               # 3x3 stride-1 stem without max-pool

    def as_dict(self) -> dict:
        return {"block": self.block, "blocks": list(self.blocks), "widths": list(self.widths), "small_input": self.small_input}


ARCHS: dict[str, ResNetLayout] = {
    "tiny": ResNetLayout("basic", (1, 1, 1), (16, 32, 64), small_input=True),
    "resnet18": ResNetLayout("basic", (2, 2, 2, 2), (64, 128, 256, 512), small_input=False),
    "resnet50": ResNetLayout("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), small_input=False),
}
_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """A ResNet feature extractor: stem, stages (the first at stride 1, the others at stride 2), global average pool."""

    def __init__(self, layout: ResNetLayout, in_channels: int = 3, zero_init_residual: bool = True):
        super().__init__()
        if in_channels < 1:
            raise ConfigError(f"in_channels must be positive, got {in_channels}")
        if len(layout.blocks) != len(layout.widths) or not layout.blocks:
            raise ConfigError(f"a ResNet layout needs as many stage widths as stages, got {layout}")
        block = _BLOCKS[layout.block]
        stem_width = layout.widths[0]
        if layout.small_input:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True)
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1),
            )
        stages = []
        planes_in = stem_width
        for i, (count, width) in enumerate(zip(layout.blocks, layout.widths)):
            blocks = []
            for j in range(count):
                blocks.append(block(planes_in, width, stride=2 if i > 0 and j == 0 else 1))
                planes_in = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = planes_in
        self.in_channels = in_channels
        self._init(zero_init_residual)

    def _init(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)


def build_resnet(arch: str, in_channels: int = 3, seed: int = 0, zero_init_residual: bool = True) -> ResNet:
    """The named layout (see `ARCHS`), initialised from `seed` without touching the caller's RNG."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown ResNet arch {arch!r}: choose one of {', '.join(ARCHS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResNet(ARCHS[arch], in_channels=in_channels, zero_init_residual=zero_init_residual)
