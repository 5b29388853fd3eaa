"""VGG11/13/16/19, with and without BatchNorm: one depth table, one body, one head.

VGG16/VGG19 are layer-for-layer identical to keras.applications. The BN variants follow
torchvision (conv with bias -> BatchNorm(eps 1e-5) -> ReLU) so its weights convert exactly.
The depth and width tables live in `models/specs.py`.
"""

from __future__ import annotations

from keras import layers

from keras_vggres.models import _common
from keras_vggres.models._build import build
from keras_vggres.models.specs import (  # noqa: F401 (table names re-exported for callers)
    FC_UNITS, TORCH_BN, VGG_DEPTHS, VGG_KERNEL, VGG_POOL, VGG_STAGES, VGG_WIDTHS, vgg_convs,
    vgg_model_name)


def conv_unit(x, width, block, index, *, batch_norm):
    """3x3 conv + ReLU (Keras naming), or conv -> BN -> ReLU with `block{b}_bn{i}` names."""
    name = f"block{block}_conv{index}"
    if not batch_norm:
        return _common.conv2d(width, VGG_KERNEL, activation="relu", padding="same",
                              name=name)(x)
    # Stride-1 3x3 "same" padding is exactly PyTorch's symmetric padding=1.
    x = _common.conv2d(width, VGG_KERNEL, padding="same", name=name)(x)
    x = layers.BatchNormalization(axis=_common.channel_axis(), name=f"block{block}_bn{index}",
                                  **TORCH_BN)(x)
    return layers.Activation("relu", name=f"block{block}_relu{index}")(x)


def vgg_body(x, depth, *, batch_norm):
    """The convs of `specs.vgg_convs`, each block closed by a 2x2 max-pool `block{b}_pool`."""
    for conv in vgg_convs(depth):
        x = conv_unit(x, conv.width, conv.block, conv.index, batch_norm=batch_norm)
        if conv.closes_block:
            x = layers.MaxPooling2D(VGG_POOL, strides=VGG_POOL, name=f"block{conv.block}_pool")(x)
    return x


def vgg_top(x, classes, classifier_activation):
    """keras.applications' VGG head: flatten (H, W, C order) -> fc1 -> fc2 -> predictions."""
    x = layers.Flatten(name="flatten")(x)
    x = _common.dense(FC_UNITS, activation="relu", name="fc1")(x)
    x = _common.dense(FC_UNITS, activation="relu", name="fc2")(x)
    return _common.classifier_layer(classes, classifier_activation)(x)


def build_vgg(depth, *, batch_norm, **contract):
    """Build one VGG from the depth table with the shared builder contract."""
    return build(vgg_model_name(depth, batch_norm=batch_norm),
                 body=lambda x, _variant: vgg_body(x, depth, batch_norm=batch_norm),
                 top=vgg_top, **contract)


# Public builders: the full keras.applications signature stays visible for help() and IDEs.
def VGG11(include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None,
          classes=1000, classifier_activation="softmax", name="vgg11", include_preprocessing=False):
    return build_vgg(11, batch_norm=False, **locals())


def VGG13(include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None,
          classes=1000, classifier_activation="softmax", name="vgg13", include_preprocessing=False):
    return build_vgg(13, batch_norm=False, **locals())


def VGG16(include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None,
          classes=1000, classifier_activation="softmax", name="vgg16", include_preprocessing=False):
    return build_vgg(16, batch_norm=False, **locals())


def VGG19(include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None,
          classes=1000, classifier_activation="softmax", name="vgg19", include_preprocessing=False):
    return build_vgg(19, batch_norm=False, **locals())


def VGG11BN(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
            pooling=None, classes=1000, classifier_activation="softmax", name="vgg11_bn",
            include_preprocessing=False):
    return build_vgg(11, batch_norm=True, **locals())


def VGG13BN(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
            pooling=None, classes=1000, classifier_activation="softmax", name="vgg13_bn",
            include_preprocessing=False):
    return build_vgg(13, batch_norm=True, **locals())


def VGG16BN(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
            pooling=None, classes=1000, classifier_activation="softmax", name="vgg16_bn",
            include_preprocessing=False):
    return build_vgg(16, batch_norm=True, **locals())


def VGG19BN(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
            pooling=None, classes=1000, classifier_activation="softmax", name="vgg19_bn",
            include_preprocessing=False):
    return build_vgg(19, batch_norm=True, **locals())


for _builder, _depth, _bn in ((VGG11, 11, False), (VGG13, 13, False), (VGG16, 16, False),
                              (VGG19, 19, False), (VGG11BN, 11, True), (VGG13BN, 13, True),
                              (VGG16BN, 16, True), (VGG19BN, 19, True)):
    _builder.__doc__ = _common.builder_docstring(
        f"Instantiates the VGG{_depth} architecture"
        + (f" with BatchNorm after every convolution (torchvision's `vgg{_depth}_bn`)." if _bn
           else " (Simonyan & Zisserman, 2014)."))
