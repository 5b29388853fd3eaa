"""The builder contract shared by every family: argument checks, model input, head, weights.

keras.applications' argument rules (`obtain_input_shape`, the weights/classes checks of its
builders) are reproduced here once; where Keras is silent or surprising (an unknown `pooling`
silently ignored, a list `input_shape` rejected) we raise a clear error or do the safe thing
instead.
"""

from __future__ import annotations

import contextvars
import os
from contextlib import contextmanager

import keras
from keras import layers

from keras_vggres._checks import POOLING, check_choice  # noqa: F401 (re-exported)
from keras_vggres.models.specs import POOL_LAYERS

PRETRAINED_ACTIVATIONS = (None, "softmax", "linear")
DATA_FORMATS = ("channels_last", "channels_first")
MIN_SIZE = 32
DEFAULT_SIZE = 224
PRETRAINED_CLASSES = 1000


def channel_axis():
    """BatchNorm / concat axis for the current image data format."""
    return 1 if keras.config.image_data_format() == "channels_first" else -1


# --------------------------------------------------------------------------- argument checks
def check_builder_args(*, include_top, pretrained, input_shape, input_tensor, pooling, classes,
                       classifier_activation, weights_given):
    """Validate everything that does not depend on the architecture; return the input shape."""
    if not isinstance(include_top, bool):
        raise TypeError(f"`include_top` must be True or False; received include_top={include_top!r}.")
    if not include_top:
        check_choice("pooling", pooling, POOLING)
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"`classes` must be an integer >= 1; received classes={classes!r}.")
    if pretrained and include_top and classes != PRETRAINED_CLASSES:
        raise ValueError(
            f"If using pretrained weights (weights={weights_given!r}) with `include_top=True`, "
            f"`classes` should be {PRETRAINED_CLASSES}; received classes={classes}. Use "
            "`include_top=False` and add your own head (see keras_vggres.transfer.classifier).")
    if weights_given is not None and include_top:
        check_choice("classifier_activation", classifier_activation, PRETRAINED_ACTIVATIONS)
    if input_tensor is not None and not keras.backend.is_keras_tensor(input_tensor):
        raise ValueError(
            "`input_tensor` must be a KerasTensor (the output of `keras.Input` or of a layer); "
            f"received an object of type {type(input_tensor).__name__}.")
    return obtain_input_shape(input_shape, include_top=include_top, pretrained=pretrained)


def obtain_input_shape(input_shape, *, include_top, pretrained):
    """keras.applications' `obtain_input_shape`, accepting lists as well as tuples."""
    channels_first = keras.config.image_data_format() == "channels_first"
    default = (3, DEFAULT_SIZE, DEFAULT_SIZE) if channels_first else (DEFAULT_SIZE, DEFAULT_SIZE, 3)
    if input_shape is None or len(input_shape) == 0:
        if include_top:
            return default
        return (3, None, None) if channels_first else (None, None, 3)
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError("`input_shape` must be a tuple of three integers (height, width, channels)"
                         f"; received input_shape={input_shape!r}.")
    input_shape = tuple(input_shape)
    channels = input_shape[0] if channels_first else input_shape[-1]
    spatial = input_shape[1:] if channels_first else input_shape[:2]
    default_spatial = default[1:] if channels_first else default[:2]
    if pretrained and include_top and spatial != default_spatial:
        raise ValueError("When setting `include_top=True` and loading pretrained weights, "
                         f"`input_shape` should be {default} (any number of channels); "
                         f"received input_shape={input_shape}.")
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError("`input_shape` must end with the number of channels, an integer >= 1 "
                         f"(channels_first: start with it); received input_shape={input_shape}.")
    for dim in spatial:
        if dim is not None and dim < MIN_SIZE:
            raise ValueError(f"Input size must be at least {MIN_SIZE}x{MIN_SIZE}; received "
                             f"input_shape={input_shape}.")
    if include_top and None in spatial:
        raise ValueError("If `include_top` is True, you should specify a static `input_shape`; "
                         f"received input_shape={input_shape}.")
    return input_shape


# --------------------------------------------------------------------------- input and head
def input_channels(tensor):
    """The channel count of an image tensor (current data format)."""
    return int(tensor.shape[channel_axis()])


def model_input(input_tensor, input_shape):
    """Return (model inputs, first tensor). Parity quirk: the Input layer keeps Keras' auto name."""
    if input_tensor is None:
        img_input = layers.Input(shape=input_shape)
        return img_input, img_input
    inputs = keras.utils.get_source_inputs(input_tensor)
    return inputs, input_tensor


def pooled_output(x, pooling):
    """The no-top output: the feature map, or its global average / max (named for stable access)."""
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name=POOL_LAYERS["avg"])(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name=POOL_LAYERS["max"])(x)
    return x


def classifier_layer(classes, activation):
    """The final Dense layer of every family, named `predictions` like keras.applications."""
    return dense(classes, activation=activation, name="predictions")


# --------------------------------------------------------------------------- weighted layers
# A random draw for 138M VGG16 weights costs seconds and ~2x their size in temporaries, and is
# thrown away when a weights file is loaded next. While `weights_will_load()` is active, the
# factories below give kernels the cheap "zeros" initializer instead; on exit every layer gets
# its original initializer back, so configs (and `clone_model`) are exactly keras.applications'.
_PLACEHOLDER_KERNELS = contextvars.ContextVar("keras_vggres_placeholder_kernels", default=None)


@contextmanager
def weights_will_load():
    """Build with placeholder (zero) kernels; only for models whose every weight is then loaded.

    The loaders are all or nothing (every weight assigned, or an error and no model), so the
    placeholder values can never reach a user.
    """
    swapped = []
    token = _PLACEHOLDER_KERNELS.set(swapped)
    try:
        yield
    finally:
        _PLACEHOLDER_KERNELS.reset(token)
        for layer, initializer in swapped:
            layer.kernel_initializer = initializer


def placeholder_kernel(layer):
    """Inside `weights_will_load()`, give `layer`'s kernel (if any) the placeholder initializer;
    outside it, leave the layer alone. Returns `layer`."""
    swapped = _PLACEHOLDER_KERNELS.get()
    if swapped is not None and isinstance(getattr(layer, "kernel_initializer", None),
                                          keras.initializers.Initializer):
        swapped.append((layer, layer.kernel_initializer))
        layer.kernel_initializer = keras.initializers.Zeros()
    return layer


def conv2d(*args, **kwargs):
    """`layers.Conv2D`; its kernel is a placeholder inside `weights_will_load()`."""
    return placeholder_kernel(layers.Conv2D(*args, **kwargs))


def dense(*args, **kwargs):
    """`layers.Dense`; its kernel is a placeholder inside `weights_will_load()`."""
    return placeholder_kernel(layers.Dense(*args, **kwargs))


def describe_weights_arg(weights):
    """Normalise `weights` to None, a tag string or a filesystem path; raise TypeError otherwise."""
    if weights is None:
        return None
    if isinstance(weights, os.PathLike):
        return os.fspath(weights)
    if isinstance(weights, str):
        return weights
    raise TypeError("`weights` must be None, 'imagenet', a weights tag or a path to a weights "
                    f"file; received an object of type {type(weights).__name__}: {weights!r}.")


BUILDER_ARGS_DOC = """
    Args:
        include_top: whether to include the classifier head (for VGG: `flatten`, `fc1`, `fc2`,
            `predictions`; for ResNet: `avg_pool`, `predictions`).
        weights: `None` (random initialisation), `"imagenet"` (the model's default pretrained
            tag), a weights tag listed by `keras_vggres.list_weights(model)` (e.g. `"tv1"`), or the
            path to a weights file (Keras HDF5, `.weights.h5`, `.keras` or torchvision `.pth`).
        input_tensor: optional Keras tensor (output of `keras.Input()`) to use as image input.
        input_shape: optional shape tuple; only to be specified if `include_top` is False or
            weights are not pretrained (otherwise it must be `(224, 224, 3)`). Width and height
            must be at least 32.
        pooling: optional pooling mode when `include_top` is False: `None` (4D feature map),
            `"avg"` or `"max"` (2D output). Any other value raises a ValueError.
        classes: number of classes, only used if `include_top` is True; must be 1000 with
            pretrained weights.
        classifier_activation: activation of the `predictions` layer (`"softmax"`, `None`, or
            with `weights=None` any Keras activation).
        name: the model name.
        include_preprocessing: `False`; `True` to put the weights' preprocessing inside the
            model (input: RGB 0-255); or a mode name (`"caffe"`, `"tf"`, `"torch"`).{extra}

    Returns:
        A `keras.Model` instance.
"""


def builder_docstring(summary, extra=""):
    """The shared builder docstring: a one-line summary + the common argument block."""
    return summary + "\n" + BUILDER_ARGS_DOC.format(extra=extra)
