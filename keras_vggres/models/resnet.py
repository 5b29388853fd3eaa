"""ResNet18/34/50/101/152 (v1 and v1.5) and ResNet50V2/101V2/152V2: one table, one block function.

Flavours differ only in the fields of `ResNetStyle`:
- "v1": keras.applications' Caffe-style ResNet (stride on the first 1x1 conv, conv biases);
- "v1.5": torchvision's layout (stride on the 3x3 conv, no conv biases, BN eps 1e-5), with
  explicit symmetric ZeroPadding2D + valid convs so PyTorch weights give identical outputs;
- "v2": keras.applications' pre-activation ResNetV2 (stride on the last block of a stage).
"""

from __future__ import annotations

from dataclasses import dataclass

from keras import layers

from keras_vggres.models import _common
from keras_vggres.models._build import build

RESNET_SPECS = {  # name: (block, blocks per stage conv2..conv5)
    "resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)), "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = {"basic": 1, "bottleneck": 4}
STEM_WIDTH = 64
RESNET_STAGES = ("stem", "conv2", "conv3", "conv4", "conv5", "head")
RESNET_V2_STAGES = ("stem", "conv2", "conv3", "conv4", "conv5", "post", "head")
KERAS_BN = {"epsilon": 1.001e-5}
TORCH_BN = {"epsilon": 1e-5, "momentum": 0.9}  # PyTorch's eps and momentum=0.1 convention


@dataclass(frozen=True)
class ResNetStyle:
    """What distinguishes one ResNet flavour; the block code reads nothing else."""

    preact: bool         # BN-ReLU before each block (v2), `post_bn` after the last stage
    stride_on: str       # which conv of a bottleneck strides: "1x1" or "3x3"
    stride_block: str    # which block of a stage strides: "first" or "last"
    conv_bias: tuple     # use_bias of (stem, _0_conv, _1_conv, _2_conv, _3_conv)
    explicit_pad: bool   # ZeroPadding2D + valid 3x3 conv instead of padding="same"
    bn: dict


STYLES = {
    "v1": ResNetStyle(preact=False, stride_on="1x1", stride_block="first",
                      conv_bias=(True,) * 5, explicit_pad=False, bn=KERAS_BN),
    "v1.5": ResNetStyle(preact=False, stride_on="3x3", stride_block="first",
                        conv_bias=(False,) * 5, explicit_pad=True, bn=TORCH_BN),
    "v2": ResNetStyle(preact=True, stride_on="3x3", stride_block="last",
                      conv_bias=(True, True, False, False, True), explicit_pad=True, bn=KERAS_BN),
}
RESNET_VARIANTS = ("v1", "v1.5")     # the choice offered by ResNet50/101/152
TORCHVISION_VARIANTS = ("v1.5",)     # ResNet18/34 exist only in torchvision's layout
V2_VARIANTS = ("v2",)


def _bn(x, name, style):
    return layers.BatchNormalization(axis=_common.channel_axis(), name=name, **style.bn)(x)


def _bn_relu(x, prefix, style):
    x = _bn(x, f"{prefix}_bn", style)
    return layers.Activation("relu", name=f"{prefix}_relu")(x)


def _conv(x, filters, kernel, stride, prefix, style, bias_index):
    """A named conv; 3x3 convs pad explicitly (`{prefix}_pad`) where the style asks for it."""
    padding = "valid"
    if kernel > 1 and style.explicit_pad:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{prefix}_pad")(x)
    elif kernel > 1:
        padding = "same"
    return _common.conv2d(filters, kernel, strides=stride, padding=padding,
                          use_bias=style.conv_bias[bias_index], name=f"{prefix}_conv")(x)


def _shortcut(x, preact, out_channels, stride, name, style, projection):
    """Projection (`_0_conv` + `_0_bn`), strided 1x1 max-pool (v2) or identity."""
    if projection:
        source = preact if style.preact else x
        shortcut = _conv(source, out_channels, 1, stride, f"{name}_0", style, 1)
        return shortcut if style.preact else _bn(shortcut, f"{name}_0_bn", style)
    if stride > 1:  # keras.applications leaves this layer auto-named; we name it.
        return layers.MaxPooling2D(1, strides=stride, name=f"{name}_0_pool")(x)
    return x


def residual_block(x, filters, *, name, kind, style, stride, projection):
    """One basic or bottleneck block in any style; the Add takes [shortcut, main] like Keras."""
    preact = _bn_relu(x, f"{name}_preact", style) if style.preact else x
    out_channels = filters * EXPANSION[kind]
    shortcut = _shortcut(x, preact, out_channels, stride, name, style, projection)
    if kind == "bottleneck":
        first_stride = stride if style.stride_on == "1x1" else 1
        h = _bn_relu(_conv(preact, filters, 1, first_stride, f"{name}_1", style, 2),
                     f"{name}_1", style)
        h = _bn_relu(_conv(h, filters, 3, stride // first_stride, f"{name}_2", style, 3),
                     f"{name}_2", style)
        h = _conv(h, out_channels, 1, 1, f"{name}_3", style, 4)
        last = f"{name}_3_bn"
    else:
        h = _bn_relu(_conv(preact, filters, 3, stride, f"{name}_1", style, 2), f"{name}_1", style)
        h = _conv(h, filters, 3, 1, f"{name}_2", style, 3)
        last = f"{name}_2_bn"
    if style.preact:
        return layers.Add(name=f"{name}_out")([shortcut, h])
    x = layers.Add(name=f"{name}_add")([shortcut, _bn(h, last, style)])
    return layers.Activation("relu", name=f"{name}_out")(x)


def _block_stride(stage, block, blocks, style):
    """v1: the first block of conv3..conv5 strides; v2: the last block of conv2..conv4."""
    if style.stride_block == "first":
        return 2 if block == 1 and stage > 2 else 1
    return 2 if block == blocks and stage < 5 else 1


def _stem(x, style):
    x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = _common.conv2d(STEM_WIDTH, 7, strides=2, use_bias=style.conv_bias[0], name="conv1_conv")(x)
    if not style.preact:
        x = _bn_relu(x, "conv1", style)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def resnet_body(x, depth_name, variant):
    """Stem, stages conv2..conv5 from `RESNET_SPECS`, and v2's `post_bn`/`post_relu`."""
    kind, blocks_per_stage = RESNET_SPECS[depth_name]
    style = STYLES[variant]
    x = _stem(x, style)
    channels = STEM_WIDTH
    for stage, (blocks, width) in enumerate(zip(blocks_per_stage, STAGE_WIDTHS), start=2):
        for block in range(1, blocks + 1):
            stride = _block_stride(stage, block, blocks, style)
            out_channels = width * EXPANSION[kind]
            projection = block == 1 and (stride != 1 or channels != out_channels)
            x = residual_block(x, width, name=f"conv{stage}_block{block}", kind=kind, style=style,
                               stride=stride, projection=projection)
            channels = out_channels
    if style.preact:
        x = _bn_relu(x, "post", style)
    return x


def resnet_top(x, classes, classifier_activation):
    """keras.applications' ResNet head: global average pool -> predictions."""
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return _common.classifier_layer(classes, classifier_activation)(x)


def build_resnet(model_name, *, variants, **contract):
    """Build one ResNet from the table; `model_name` is e.g. `resnet50` or `resnet50v2`."""
    depth_name = model_name.removesuffix("v2")
    return build(model_name, body=lambda x, variant: resnet_body(x, depth_name, variant),
                 top=resnet_top, variants=variants, **contract)


# Public builders: the full keras.applications signature stays visible for help() and IDEs.
def ResNet18(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
             pooling=None, classes=1000, classifier_activation="softmax", name="resnet18",
             include_preprocessing=False):
    return build_resnet("resnet18", variants=TORCHVISION_VARIANTS, **locals())


def ResNet34(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
             pooling=None, classes=1000, classifier_activation="softmax", name="resnet34",
             include_preprocessing=False):
    return build_resnet("resnet34", variants=TORCHVISION_VARIANTS, **locals())


def ResNet50(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
             pooling=None, classes=1000, classifier_activation="softmax", name="resnet50",
             include_preprocessing=False, variant=None):
    return build_resnet("resnet50", variants=RESNET_VARIANTS, **locals())


def ResNet101(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
              pooling=None, classes=1000, classifier_activation="softmax", name="resnet101",
              include_preprocessing=False, variant=None):
    return build_resnet("resnet101", variants=RESNET_VARIANTS, **locals())


def ResNet152(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
              pooling=None, classes=1000, classifier_activation="softmax", name="resnet152",
              include_preprocessing=False, variant=None):
    return build_resnet("resnet152", variants=RESNET_VARIANTS, **locals())


def ResNet50V2(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
               pooling=None, classes=1000, classifier_activation="softmax", name="resnet50v2",
               include_preprocessing=False):
    return build_resnet("resnet50v2", variants=V2_VARIANTS, **locals())


def ResNet101V2(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax", name="resnet101v2",
                include_preprocessing=False):
    return build_resnet("resnet101v2", variants=V2_VARIANTS, **locals())


def ResNet152V2(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax", name="resnet152v2",
                include_preprocessing=False):
    return build_resnet("resnet152v2", variants=V2_VARIANTS, **locals())


_VARIANT_DOC = """
        variant: `None` (the weights tag decides; else "v1"), "v1" (identical to
            keras.applications: stride on the first 1x1 conv, conv biases) or "v1.5"
            (torchvision: stride on the 3x3 conv, no conv biases, BatchNorm eps 1e-5)."""
for _builder, _summary, _extra in (
        (ResNet18, "ResNet18 (basic blocks, torchvision layout)", ""),
        (ResNet34, "ResNet34 (basic blocks, torchvision layout)", ""),
        (ResNet50, "ResNet50 (v1 as keras.applications, or torchvision's v1.5)", _VARIANT_DOC),
        (ResNet101, "ResNet101 (v1 as keras.applications, or torchvision's v1.5)", _VARIANT_DOC),
        (ResNet152, "ResNet152 (v1 as keras.applications, or torchvision's v1.5)", _VARIANT_DOC),
        (ResNet50V2, "ResNet50V2 (pre-activation), identical to keras.applications", ""),
        (ResNet101V2, "ResNet101V2 (pre-activation), identical to keras.applications", ""),
        (ResNet152V2, "ResNet152V2 (pre-activation), identical to keras.applications", "")):
    _builder.__doc__ = _common.builder_docstring(f"Instantiates the {_summary}.", _extra)
