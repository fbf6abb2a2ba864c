"""Small image-classification networks for 32 px inputs (CPU-friendly, for quick runs).

* :class:`CifarResNet` — the classic 3-stage CIFAR ResNet of He et al. (2016), depth
  ``6n + 2`` (resnet8, 14, 20, 32, 56, 110), base width 16 (``width`` option; RepDistiller's
  ``resnet8x4``/``resnet32x4`` use width 64);
* :func:`cifar_resnet18` — torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool
  (state-dict keys stay torchvision's);
* :class:`ConvNet` — three conv blocks and a linear head, for very fast tests.

Every model exposes ``feature_dim`` (width of the penultimate features), ``forward_features(x)``
(pooled features before the classifier) and ``classifier`` (the final ``nn.Linear``).  kdkit's
own models compute the pooled features in a module ``pool``, so that a feature tap (``student:
pool``) receives the penultimate embedding (``B x feature_dim``) that relational and contrastive
distillation methods compare.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def _global_pool() -> nn.Module:
    """Global average pooling to ``B x C`` (a module, so that it can be tapped)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """3-stage ResNet for small images: 3x3 stem, stages of widths (w, 2w, 4w), ``n`` blocks each."""

    def __init__(self, depth: int = 20, num_classes: int = 10, width: int = 16, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 56, 110); got {depth}")
        n = (depth - 2) // 6
        w = int(width)
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.in_planes = w
        self.layer1 = self._stage(w, n, 1)
        self.layer2 = self._stage(2 * w, n, 2)
        self.layer3 = self._stage(4 * w, n, 2)
        self.feature_dim = 4 * w
        self.pool = _global_pool()
        self.classifier = nn.Linear(4 * w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


class ConvNet(nn.Module):
    """Tiny CNN: three (conv-BN-ReLU, pool) blocks of widths (w, 2w, 4w) and a linear head."""

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 3):
        super().__init__()
        w = int(width)
        blocks, c = [], in_channels
        for i, out in enumerate((w, 2 * w, 4 * w)):
            blocks += [nn.Conv2d(c, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if i < 2:
                blocks.append(nn.MaxPool2d(2))
            c = out
        self.features = nn.Sequential(*blocks)
        self.feature_dim = c
        self.pool = _global_pool()
        self.classifier = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def _torchvision_resnet_class():
    from torchvision.models.resnet import ResNet

    class TorchvisionResNet(ResNet):
        """torchvision's ResNet (same state-dict keys, so torchvision weight files load as they
        are) with kdkit's common interface: ``feature_dim``, ``forward_features``, ``classifier``."""

        @property
        def classifier(self) -> nn.Linear:
            return self.fc

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return torch.flatten(self.avgpool(x), 1)

    return TorchvisionResNet


_TV_LAYOUTS = {
    "resnet18": ("BasicBlock", [2, 2, 2, 2]),
    "resnet34": ("BasicBlock", [3, 4, 6, 3]),
    "resnet50": ("Bottleneck", [3, 4, 6, 3]),
    "resnet101": ("Bottleneck", [3, 4, 23, 3]),
}


def torchvision_resnet(
    arch: str = "resnet18", num_classes: int = 1000, small_input: bool = False, in_channels: int = 3
) -> nn.Module:
    """torchvision ResNet ``arch`` (random init).  ``small_input``: 3x3 stride-1 stem and no
    max-pool (the CIFAR variant); ``in_channels``: input channels of ``conv1``."""
    from torchvision.models import resnet as tv_resnet

    block_name, layers = _TV_LAYOUTS[arch]
    model = _torchvision_resnet_class()(getattr(tv_resnet, block_name), layers, num_classes=num_classes)
    model.arch = arch
    if small_input or in_channels != 3:
        k, stride, pad = (3, 1, 1) if small_input else (7, 2, 3)
        model.conv1 = nn.Conv2d(in_channels, 64, k, stride, pad, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if small_input:
        model.maxpool = nn.Identity()
    model.feature_dim = model.fc.in_features
    return model
