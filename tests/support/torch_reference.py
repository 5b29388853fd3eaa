"""Compact PyTorch copies of torchvision's ResNet (v1.5) and VGG, with its exact parameter names.

torchvision is not installed in the test environment, so these re-implement just enough of
`torchvision.models.resnet` / `.vgg` to produce identical state-dict keys, shapes and forward
passes. Depths come from the package's own tables. Test-only: imports torch.
"""

from __future__ import annotations

import torch
from torch import nn

from keras_vggres.models.resnet import EXPANSION, RESNET_SPECS, STAGE_WIDTHS, STEM_WIDTH
from keras_vggres.models.vgg import FC_UNITS, VGG_DEPTHS, VGG_WIDTHS


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck: the stride sits on the 3x3 conv."""

    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * EXPANSION["bottleneck"], 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION["bottleneck"])
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    def __init__(self, model_name, num_classes=1000):
        super().__init__()
        kind, blocks_per_stage = RESNET_SPECS[model_name]
        block_cls = Bottleneck if kind == "bottleneck" else BasicBlock
        self.inplanes = STEM_WIDTH
        self.conv1 = nn.Conv2d(3, STEM_WIDTH, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for index, (blocks, width) in enumerate(zip(blocks_per_stage, STAGE_WIDTHS), start=1):
            stride = 1 if index == 1 else 2
            setattr(self, f"layer{index}", self._make_layer(block_cls, kind, width, blocks, stride))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(STAGE_WIDTHS[-1] * EXPANSION[kind], num_classes)

    def _make_layer(self, block_cls, kind, planes, blocks, stride):
        out = planes * EXPANSION[kind]
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride, bias=False),
                                       nn.BatchNorm2d(out))
        layers = [block_cls(self.inplanes, planes, stride, downsample)]
        self.inplanes = out
        layers += [block_cls(out, planes, 1, None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x):
        """The feature map before average pooling (our include_top=False output)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


class VGG(nn.Module):
    def __init__(self, depth, *, batch_norm, num_classes=1000):
        super().__init__()
        layers, channels = [], 3
        for convs, width in zip(VGG_DEPTHS[depth], VGG_WIDTHS):
            for _ in range(convs):
                layers.append(nn.Conv2d(channels, width, 3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(channels * 7 * 7, FC_UNITS), nn.ReLU(True), nn.Dropout(),
            nn.Linear(FC_UNITS, FC_UNITS), nn.ReLU(True), nn.Dropout(),
            nn.Linear(FC_UNITS, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def build(model_name, *, device=None):
    """torchvision-equivalent network for `model_name` (`resnet50`, `vgg16_bn`, ...), eval mode."""
    with torch.device(device or "cpu"):
        if model_name in RESNET_SPECS:
            model = ResNet(model_name)
        else:
            depth, _, suffix = model_name.removeprefix("vgg").partition("_")
            model = VGG(int(depth), batch_norm=suffix == "bn")
    return model.eval()


@torch.no_grad()
def randomize(model, seed=0):
    """Random weights with non-trivial BatchNorm statistics, scaled to keep activations O(1)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                                * (2.0 / fan_in) ** 0.5)
            if module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
        elif isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.num_batches_tracked.fill_(7)
    return model


def make_state_dict_file(model_name, path, seed=0):
    """Save a randomized reference net's state dict with `torch.save`; return the net."""
    model = randomize(build(model_name), seed)
    torch.save(model.state_dict(), path)
    return model


def meta_state_dict_shapes(model_name):
    """``{key: shape}`` of the torchvision state dict, built on the meta device (no memory)."""
    state = build(model_name, device="meta").state_dict()
    return {key: tuple(value.shape) for key, value in state.items()}
