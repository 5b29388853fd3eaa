"""A preprocessing mode applied to arrays (NumPy) or tensors (keras.ops): the arithmetic alone.

Shared by `keras_vggres.preprocessing` (the public functions) and the registered
`ImageNetPreprocessing` layer in `keras_vggres._keras_objects`, which must not import the
public module (registration happens while it may still be importing).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_vggres._checks import check_choice

DATA_FORMATS = (None, "channels_first", "channels_last")


def resolve_data_format(data_format):
    check_choice("data_format", data_format, DATA_FORMATS)
    return data_format or keras.config.image_data_format()


def _channel_axis(ndim, data_format):
    if data_format == "channels_last":
        return ndim - 1
    if ndim not in (3, 4):
        raise ValueError(
            "With data_format='channels_first' the input must be 3D (channels, height, width) "
            f"or 4D (batch, channels, height, width); received an input with {ndim} dimensions."
        )
    return ndim - 3


def _checked_layout(shape, data_format, channels=3):
    """Return (channel axis, broadcast shape for per-channel constants) for an input shape."""
    ndim = len(shape)
    if ndim == 0:
        raise ValueError("`x` must be an image or a batch of images; received a scalar.")
    axis = _channel_axis(ndim, data_format)
    if shape[axis] is not None and shape[axis] != channels:
        raise ValueError(
            f"`x` must have {channels} colour channels on axis {axis} (data_format="
            f"{data_format!r}); received shape {tuple(shape)}."
        )
    return axis, (channels,) + (1,) * (ndim - 1 - axis)


def _is_float(dtype):
    return "float" in keras.backend.standardize_dtype(dtype)


def _apply_numpy(x, spec, data_format):
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(keras.config.floatx())
    axis, cshape = _checked_layout(x.shape, data_format, len(spec.mean))
    if spec.flips_channels:
        x = np.flip(x, axis=axis)
    x = x / x.dtype.type(spec.divisor)  # new array: the caller's array is never modified
    x -= np.asarray(spec.mean, dtype=x.dtype).reshape(cshape)
    if spec.std is not None:
        x /= np.asarray(spec.std, dtype=x.dtype).reshape(cshape)
    return x


def _apply_ops(x, spec, data_format, dtype=None):
    x = ops.convert_to_tensor(x)
    if dtype is not None:
        x = ops.cast(x, dtype)
    elif not _is_float(x.dtype):
        x = ops.cast(x, keras.config.floatx())
    axis, cshape = _checked_layout(tuple(x.shape), data_format, len(spec.mean))
    if spec.flips_channels:
        x = ops.flip(x, axis=axis)
    x = x / spec.divisor
    x = x - ops.convert_to_tensor(np.reshape(spec.mean, cshape), dtype=x.dtype)
    if spec.std is not None:
        x = x / ops.convert_to_tensor(np.reshape(spec.std, cshape), dtype=x.dtype)
    return x
