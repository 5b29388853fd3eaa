"""Forward multiply-accumulates per image, read off a Keras graph: convolutions and dense layers.

A minimal counter for benchmarks/gpu.py's MFU (keras_vggres has no `profile.py` on this branch;
when it lands, this can defer to it). Conv2D: output height x width x filters x kernel area x
input channels / groups; Dense: input features x units, times any extra leading dimensions.
BatchNorm, activations, pooling and additions are not counted (a few tenths of a percent of a
ResNet's work), as in torchvision's published GFLOPS, which are these MACs: ResNet50 (v1.5)
4.089, VGG16 15.47 at 224 px. Nested models are walked through. Keras only, any backend.
"""

from __future__ import annotations

import math


def _per_image(shape):
    return math.prod(int(d) for d in shape[1:])


def layer_macs(layer) -> int:
    """MACs of one call of `layer` on one image (0 for layers that are not conv / dense)."""
    import keras

    if isinstance(layer, keras.layers.Conv2D):
        kernel_h, kernel_w, in_per_group, _ = layer.kernel.shape
        return _per_image(layer.output.shape) * int(kernel_h) * int(kernel_w) * int(in_per_group)
    if isinstance(layer, keras.layers.Dense):
        inputs, _ = layer.kernel.shape
        return _per_image(layer.output.shape) * int(inputs)
    return 0


def forward_macs(model) -> int:
    """Forward MACs per image of a built Functional `model` (nested models included)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_macs(layer)
        else:
            total += layer_macs(layer)  # builders call each layer once
    return total


def training_flops(forward_macs_per_image) -> int:
    """FLOPs of one training step per image: forward + backward = 3 x forward, 2 FLOPs per MAC."""
    return 3 * 2 * forward_macs_per_image
