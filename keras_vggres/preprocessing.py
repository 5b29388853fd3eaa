"""ImageNet preprocessing: the `preprocess_input` functions and the in-model preprocessing.

Every mode is defined once, in `keras_vggres.transforms.PREPROCESS_MODES`. `preprocess_input`
applies it to arrays and tensors with keras.applications' numbers; `add_preprocessing` puts it
inside a model with Keras' own standard operations (a channel flip and one `Rescaling` layer
named "preprocessing"), so a saved model loads anywhere Keras does, with no custom layer.
`ImageNetPreprocessing` is the older custom layer, kept (and registered) for existing files.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_vggres._checks import check_choice
from keras_vggres._keras_objects import ImageNetPreprocessing  # noqa: F401 (re-exported)
from keras_vggres._preprocess_math import (DATA_FORMATS, _apply_numpy,  # noqa: F401
                                           _apply_ops, resolve_data_format)
from keras_vggres.transforms import PREPROCESS_MODES

LAYER_NAME = "preprocessing"


def preprocess_input(x, data_format=None, mode="caffe"):
    """Preprocesses a tensor or NumPy array of RGB images with values in 0-255.

    Drop-in for ``keras.applications.imagenet_utils.preprocess_input`` (same arguments and
    numbers), with two safety fixes: the caller's array is never modified, and integer inputs
    (``uint8``, ``int32``...) are cast to ``keras.config.floatx()`` before any arithmetic, so
    nothing wraps around. Float inputs keep their dtype.

    Args:
        x: A 3D image or 4D batch: NumPy array, nested list, backend tensor or symbolic
            ``KerasTensor`` (so it can be used inside a functional model).
        data_format: ``"channels_last"``, ``"channels_first"`` or ``None`` (use
            ``keras.config.image_data_format()``).
        mode: one of ``PREPROCESS_MODES``: ``"caffe"`` (RGB->BGR, subtract the ImageNet mean
            pixel), ``"tf"`` (scale to [-1, 1]) or ``"torch"`` (scale to [0, 1], normalise
            with the ImageNet mean and std).

    Returns:
        A new array (for NumPy or list input) or tensor of the same shape.
    """
    check_choice("mode", mode, tuple(PREPROCESS_MODES))
    return apply_mode(x, PREPROCESS_MODES[mode], data_format)


def apply_mode(x, spec, data_format=None):
    """`preprocess_input` for a `PreprocessMode` object (e.g. a channel-adapted one)."""
    data_format = resolve_data_format(data_format)
    if isinstance(x, (np.ndarray, np.generic, list, tuple)):
        return _apply_numpy(x, spec, data_format)
    return _apply_ops(x, spec, data_format)


def make_preprocess_input(mode, *, spec=None):
    """Returns ``preprocess_input(x, data_format=None)`` with ``mode`` fixed (drop-in modules).

    ``spec`` overrides the mode's recipe (a channel-adapted `PreprocessMode`).
    """
    check_choice("mode", mode, tuple(PREPROCESS_MODES))
    spec = spec or PREPROCESS_MODES[mode]

    def preprocess_input_for_mode(x, data_format=None):
        return apply_mode(x, spec, data_format)

    preprocess_input_for_mode.__name__ = "preprocess_input"
    preprocess_input_for_mode.__qualname__ = "preprocess_input"
    preprocess_input_for_mode.__doc__ = (
        f"Preprocesses RGB images (0-255) for this model: ImageNet {mode!r} mode.\n\n"
        "Same as ``keras_vggres.imagenet.preprocess_input(x, data_format, "
        f"mode={mode!r})``: never modifies the caller's array and casts integer inputs to\n"
        "float first.\n\n"
        "Args:\n"
        "    x: A 3D image or 4D batch (NumPy array, tensor or KerasTensor), values 0-255.\n"
        "    data_format: `'channels_last'`, `'channels_first'` or `None` (the Keras default).\n\n"
        "Returns:\n"
        "    Preprocessed array or tensor, same shape as `x`.\n"
    )
    preprocess_input_for_mode.mode = mode
    return preprocess_input_for_mode


# ----------------------------------------------------------------------------- in the model
def add_preprocessing(x, mode, *, channels=3, name=LAYER_NAME):
    """Apply `mode` to the symbolic tensor `x` with standard Keras operations; returns the result.

    A channel flip (`keras.ops.flip`, for BGR modes) and one `Rescaling` layer named `name`
    computing ``x * scale + offset`` per channel in float32 (also under a mixed-precision
    policy; the next layer casts). Both serialise as plain Keras objects.
    """
    check_choice("mode", mode, tuple(PREPROCESS_MODES))
    spec = PREPROCESS_MODES[mode].for_channels(channels)
    channels_first = keras.config.image_data_format() == "channels_first"
    if spec.flips_channels:
        x = ops.flip(x, axis=1 if channels_first else -1)
    scale, offset = spec.scale_offset()
    if channels_first:  # Keras reshapes `scale` for channels_first, but not `offset`
        scale, offset = ([[[v]] for v in scale], [[[v]] for v in offset])
    else:
        scale, offset = list(scale), list(offset)
    layer = keras.layers.Rescaling(scale, offset, dtype="float32", name=name)
    layer.mode = mode  # read by `mode_of_layer`; a reloaded layer is recognised by its numbers
    return layer(x)


def preprocessing_layer(model):
    """The in-model preprocessing layer of `model` (or of a model nested in it), or None."""
    stack = list(getattr(model, "layers", ()))
    while stack:
        layer = stack.pop(0)
        if isinstance(layer, ImageNetPreprocessing) or (
                layer.name == LAYER_NAME and isinstance(layer, keras.layers.Rescaling)):
            return layer
        stack += list(getattr(layer, "layers", ()))
    return None


def mode_of_layer(layer):
    """The preprocessing mode a layer of `preprocessing_layer` applies (None if unknown)."""
    if isinstance(getattr(layer, "mode", None), str):
        return layer.mode
    scale = np.ravel(np.asarray(layer.scale, np.float64))
    offset = np.ravel(np.asarray(layer.offset, np.float64))
    for name, spec in PREPROCESS_MODES.items():
        want_scale, want_offset = spec.for_channels(len(scale)).scale_offset()
        if np.allclose(scale, want_scale, rtol=1e-6) and np.allclose(offset, want_offset,
                                                                      rtol=1e-6):
            return name
    return None
