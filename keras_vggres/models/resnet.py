"""ResNet18/34/50/101/152 (v1 and v1.5) and ResNet50V2/101V2/152V2: one block function.

The tables, the block list and the stride/projection rules live in `models/specs.py`; this
module only turns them into named Keras layers. Flavours differ only in the fields of
`specs.ResNetStyle`:
- "v1": keras.applications' Caffe-style ResNet (stride on the first 1x1 conv, conv biases);
- "v1.5": torchvision's layout (stride on the 3x3 conv, no conv biases, BN eps 1e-5), with
  explicit symmetric ZeroPadding2D + valid convs so PyTorch weights give identical outputs;
- "v2": keras.applications' pre-activation ResNetV2 (stride on the last block of a stage).
"""

from __future__ import annotations

from keras import layers

from keras_vggres.models import _common
from keras_vggres.models._build import build
from keras_vggres.models.specs import (  # noqa: F401 (table names re-exported for callers)
    EXPANSION, KERAS_BN, RESNET_SPECS, RESNET_STAGES, RESNET_V2_STAGES, RESNET_VARIANTS,
    STAGE_WIDTHS, STEM_POOL, STEM_POOL_STRIDE, STEM_WIDTH, STYLES, TORCH_BN,
    TORCHVISION_VARIANTS, V2_VARIANTS, ResNetStyle, block_convs, resnet_blocks, resnet_depth_name,
    stem_conv)


def _bn(x, name, style):
    return layers.BatchNormalization(axis=_common.channel_axis(), name=name, **style.bn)(x)


def _bn_relu(x, prefix, style):
    x = _bn(x, f"{prefix}_bn", style)
    return layers.Activation("relu", name=f"{prefix}_relu")(x)


def _conv(x, conv, style):
    """`conv` (a specs.ConvSpec) as a named layer; 3x3 convs pad explicitly (`{prefix}_pad`)
    where the style asks for it."""
    padding = "valid"
    if conv.kernel > 1 and style.explicit_pad:
        x = layers.ZeroPadding2D(conv.kernel // 2, name=f"{conv.prefix}_pad")(x)
    elif conv.kernel > 1:
        padding = "same"
    return _common.conv2d(conv.filters, conv.kernel, strides=conv.stride, padding=padding,
                          use_bias=conv.bias, name=f"{conv.prefix}_conv")(x)


def _shortcut(x, preact, projection, block, style):
    """Projection (`_0_conv` [+ `_0_bn`]), strided 1x1 max-pool (v2) or identity."""
    if projection is not None:
        shortcut = _conv(preact if style.preact else x, projection, style)
        return _bn(shortcut, f"{projection.prefix}_bn", style) if projection.bn else shortcut
    if block.stride > 1:  # keras.applications leaves this layer auto-named; we name it.
        return layers.MaxPooling2D(1, strides=block.stride, name=f"{block.name}_0_pool")(x)
    return x


def residual_block(x, block, style):
    """One basic or bottleneck block (a specs.ResNetBlock) in any style; the Add takes
    [shortcut, main] like Keras, whose layer order depends on it."""
    name = block.name
    preact = _bn_relu(x, f"{name}_preact", style) if style.preact else x
    convs = block_convs(block, style)
    projection = convs[0] if block.projection else None
    *inner, last = convs[1:] if block.projection else convs
    shortcut = _shortcut(x, preact, projection, block, style)
    h = preact
    for conv in inner:
        h = _bn_relu(_conv(h, conv, style), conv.prefix, style)
    h = _conv(h, last, style)
    if style.preact:
        return layers.Add(name=f"{name}_out")([shortcut, h])
    x = layers.Add(name=f"{name}_add")([shortcut, _bn(h, f"{last.prefix}_bn", style)])
    return layers.Activation("relu", name=f"{name}_out")(x)


def _stem(x, style):
    conv = stem_conv(style)
    x = layers.ZeroPadding2D(conv.kernel // 2, name="conv1_pad")(x)
    x = _common.conv2d(conv.filters, conv.kernel, strides=conv.stride, use_bias=conv.bias,
                       name=f"{conv.prefix}_conv")(x)
    if conv.bn:
        x = _bn_relu(x, conv.prefix, style)
    x = layers.ZeroPadding2D(STEM_POOL // 2, name="pool1_pad")(x)
    return layers.MaxPooling2D(STEM_POOL, strides=STEM_POOL_STRIDE, name="pool1_pool")(x)


def resnet_body(x, depth_name, variant):
    """Stem, the blocks of `specs.resnet_blocks`, and v2's `post_bn`/`post_relu`."""
    style = STYLES[variant]
    x = _stem(x, style)
    for block in resnet_blocks(depth_name, variant):
        x = residual_block(x, block, style)
    if style.preact:
        x = _bn_relu(x, "post", style)
    return x


def resnet_top(x, classes, classifier_activation):
    """keras.applications' ResNet head: global average pool -> predictions."""
    x = layers.GlobalAveragePooling2D(name=_common.POOL_LAYERS["avg"])(x)
    return _common.classifier_layer(classes, classifier_activation)(x)


def build_resnet(model_name, **contract):
    """Build one ResNet from the table; `model_name` is e.g. `resnet50` or `resnet50v2`."""
    depth_name = resnet_depth_name(model_name)
    return build(model_name, body=lambda x, variant: resnet_body(x, depth_name, variant),
                 top=resnet_top, **contract)


# Public builders: the full keras.applications signature stays visible for help() and IDEs.
def ResNet18(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
             pooling=None, classes=1000, classifier_activation="softmax", name="resnet18",
             include_preprocessing=False):
    return build_resnet("resnet18", **locals())


def ResNet34(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
             pooling=None, classes=1000, classifier_activation="softmax", name="resnet34",
             include_preprocessing=False):
    return build_resnet("resnet34", **locals())


def ResNet50(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
             pooling=None, classes=1000, classifier_activation="softmax", name="resnet50",
             include_preprocessing=False, variant=None):
    return build_resnet("resnet50", **locals())


def ResNet101(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
              pooling=None, classes=1000, classifier_activation="softmax", name="resnet101",
              include_preprocessing=False, variant=None):
    return build_resnet("resnet101", **locals())


def ResNet152(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
              pooling=None, classes=1000, classifier_activation="softmax", name="resnet152",
              include_preprocessing=False, variant=None):
    return build_resnet("resnet152", **locals())


def ResNet50V2(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
               pooling=None, classes=1000, classifier_activation="softmax", name="resnet50v2",
               include_preprocessing=False):
    return build_resnet("resnet50v2", **locals())


def ResNet101V2(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax", name="resnet101v2",
                include_preprocessing=False):
    return build_resnet("resnet101v2", **locals())


def ResNet152V2(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax", name="resnet152v2",
                include_preprocessing=False):
    return build_resnet("resnet152v2", **locals())


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
