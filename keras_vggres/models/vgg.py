"""VGG11/13/16/19, with and without BatchNorm: one depth table, one body, one head.

VGG16/VGG19 are layer-for-layer identical to keras.applications. The BN variants follow
torchvision (conv with bias -> BatchNorm(eps 1e-5) -> ReLU) so its weights convert exactly.
"""

from __future__ import annotations

from keras import layers

from keras_vggres.models import _common
from keras_vggres.models._build import build

VGG_WIDTHS = (64, 128, 256, 512, 512)
VGG_DEPTHS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2),
              16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
VGG_STAGES = ("block1", "block2", "block3", "block4", "block5", "head")
# torchvision-style BatchNorm: PyTorch's eps, and momentum 0.1 in PyTorch's convention.
TORCH_BN = {"epsilon": 1e-5, "momentum": 0.9}
FC_UNITS = 4096


def vgg_model_name(depth, *, batch_norm):
    """Registry / model name of a VGG variant: `vgg16`, `vgg16_bn`."""
    return f"vgg{depth}_bn" if batch_norm else f"vgg{depth}"


def conv_unit(x, width, block, index, *, batch_norm):
    """3x3 conv + ReLU (Keras naming), or conv -> BN -> ReLU with `block{b}_bn{i}` names."""
    name = f"block{block}_conv{index}"
    if not batch_norm:
        return _common.conv2d(width, 3, activation="relu", padding="same", name=name)(x)
    # Stride-1 3x3 "same" padding is exactly PyTorch's symmetric padding=1.
    x = _common.conv2d(width, 3, padding="same", name=name)(x)
    x = layers.BatchNormalization(axis=_common.channel_axis(), name=f"block{block}_bn{index}",
                                  **TORCH_BN)(x)
    return layers.Activation("relu", name=f"block{block}_relu{index}")(x)


def vgg_body(x, depth, *, batch_norm):
    """The five conv blocks, each closed by a 2x2 max-pool named `block{b}_pool`."""
    for block, (convs, width) in enumerate(zip(VGG_DEPTHS[depth], VGG_WIDTHS), start=1):
        for index in range(1, convs + 1):
            x = conv_unit(x, width, block, index, batch_norm=batch_norm)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
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
