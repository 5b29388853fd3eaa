"""ImageNet input and output handling: preprocessing modes, prediction decoding, image loading.

Every preprocessing mode is defined once in ``PREPROCESS_MODES``; ``preprocess_input``, the
functions made by ``make_preprocess_input`` and the ``ImageNetPreprocessing`` layer all apply
that table, so the function and the in-model layer cannot disagree.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from importlib import resources
from typing import Sequence

import keras
import numpy as np
from keras import ops

DATA_FORMATS = (None, "channels_first", "channels_last")


@dataclass(frozen=True)
class PreprocessMode:
    """One preprocessing recipe: ``((x[channel_order] / divisor) - mean) / std``.

    ``mean`` and ``std`` are listed in the output channel order; ``std=None`` means no division.
    """

    channel_order: str  # "RGB" keeps the input order, "BGR" reverses the channel axis
    divisor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float] | None = None


PREPROCESS_MODES = {
    # Caffe (VGG16/19, ResNet v1): RGB -> BGR, subtract the BGR mean pixel, no scaling.
    "caffe": PreprocessMode("BGR", 1.0, (103.939, 116.779, 123.68)),
    # TF / Inception style (ResNet V2): scale to [-1, 1].
    "tf": PreprocessMode("RGB", 127.5, (1.0, 1.0, 1.0)),
    # torchvision: scale to [0, 1], then normalise with the ImageNet mean and std.
    "torch": PreprocessMode("RGB", 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# Pillow resampling filter names accepted by ``load_images`` (and by manifest transforms).
DEFAULT_SIZE = 224
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def _check_choice(arg, value, choices):
    if isinstance(value, (str, type(None))) and value in choices:
        return
    raise ValueError(f"`{arg}` must be one of {tuple(choices)}; received {arg}={value!r}.")


def _resolve_data_format(data_format):
    _check_choice("data_format", data_format, DATA_FORMATS)
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


def _checked_layout(shape, data_format):
    """Return (channel axis, broadcast shape for per-channel constants) for an input shape."""
    ndim = len(shape)
    if ndim == 0:
        raise ValueError("`x` must be an image or a batch of images; received a scalar.")
    axis = _channel_axis(ndim, data_format)
    if shape[axis] is not None and shape[axis] != 3:
        raise ValueError(
            f"`x` must have 3 colour channels on axis {axis} (data_format={data_format!r}); "
            f"received shape {tuple(shape)}."
        )
    return axis, (3,) + (1,) * (ndim - 1 - axis)


def _is_float(dtype):
    return "float" in keras.backend.standardize_dtype(dtype)


def _apply_numpy(x, spec, data_format):
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(keras.config.floatx())
    axis, cshape = _checked_layout(x.shape, data_format)
    if spec.channel_order == "BGR":
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
    axis, cshape = _checked_layout(tuple(x.shape), data_format)
    if spec.channel_order == "BGR":
        x = ops.flip(x, axis=axis)
    x = x / spec.divisor
    x = x - ops.convert_to_tensor(np.reshape(spec.mean, cshape), dtype=x.dtype)
    if spec.std is not None:
        x = x / ops.convert_to_tensor(np.reshape(spec.std, cshape), dtype=x.dtype)
    return x


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
    _check_choice("mode", mode, tuple(PREPROCESS_MODES))
    data_format = _resolve_data_format(data_format)
    spec = PREPROCESS_MODES[mode]
    if isinstance(x, (np.ndarray, np.generic, list, tuple)):
        return _apply_numpy(x, spec, data_format)
    return _apply_ops(x, spec, data_format)


def make_preprocess_input(mode):
    """Returns ``preprocess_input(x, data_format=None)`` with ``mode`` fixed (drop-in modules)."""
    _check_choice("mode", mode, tuple(PREPROCESS_MODES))

    def preprocess_input_for_mode(x, data_format=None):
        return preprocess_input(x, data_format=data_format, mode=mode)

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


@keras.saving.register_keras_serializable(package="keras_vggres")
class ImageNetPreprocessing(keras.layers.Layer):
    """Applies an ImageNet preprocessing mode inside a model (input: RGB, values 0-255).

    Equivalent to ``preprocess_input(x, data_format, mode)``; the output has the layer's
    compute dtype (float32 unless a mixed-precision policy is set). Uses only ``keras.ops``.

    Args:
        mode: one of ``"caffe"``, ``"tf"``, ``"torch"``.
        data_format: ``"channels_last"``, ``"channels_first"`` or ``None`` (Keras default).
    """

    def __init__(self, mode="caffe", data_format=None, **kwargs):
        super().__init__(**kwargs)
        _check_choice("mode", mode, tuple(PREPROCESS_MODES))
        self.mode = mode
        self.data_format = _resolve_data_format(data_format)

    def call(self, inputs):
        return _apply_ops(
            inputs, PREPROCESS_MODES[self.mode], self.data_format, dtype=self.compute_dtype
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "data_format": self.data_format})
        return config


@functools.lru_cache(maxsize=1)
def _class_index():
    """[(wnid, name)] for the 1000 ImageNet classes, read once from the bundled JSON."""
    text = resources.files("keras_vggres").joinpath("data").joinpath("imagenet_class_index.json")
    raw = json.loads(text.read_text(encoding="utf-8"))
    return tuple(tuple(raw[str(i)]) for i in range(1000))


def decode_predictions(preds, top=5):
    """Decodes ImageNet predictions into ``(wnid, class_name, score)`` tuples.

    Same output as ``keras.applications.imagenet_utils.decode_predictions``, but the class
    index is bundled (never downloaded). Unlike Keras, ``top`` must be an integer >= 1
    (Keras returns all 1000 classes for ``top=0``; ask for ``top=1000`` instead). Values above
    1000 return all 1000 classes, as in Keras.

    Args:
        preds: array or tensor of shape ``(samples, 1000)``.
        top: how many of the best classes to return per sample.

    Returns:
        A list with one list per sample of ``(wnid, class_name, score)`` tuples, best first.
    """
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"`top` must be an integer >= 1; received top={top!r}.")
    if isinstance(preds, (list, tuple)):
        preds = np.asarray(preds)
    elif not isinstance(preds, np.ndarray):
        preds = np.asarray(ops.convert_to_numpy(preds))
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(
            "`decode_predictions` expects a batch of predictions "
            "(i.e. a 2D array of shape (samples, 1000)). "
            f"Received array with shape: {preds.shape}"
        )
    index = _class_index()
    results = []
    for pred in preds:
        best = pred.argsort()[-int(top):][::-1]
        result = [index[i] + (pred[i],) for i in best]
        result.sort(key=lambda item: item[2], reverse=True)
        results.append(result)
    return results


# ----------------------------------------------------------------------------- image loading

_ALPHA_MODES = ("LA", "PA", "RGBA")
_PLAIN_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr")
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit data: 0-65535
_SUPPORTED_MODES = _PLAIN_MODES + _ALPHA_MODES + _HIGH_DEPTH_MODES


def _pil():
    from PIL import Image, ImageOps  # Pillow is imported only when images are loaded

    return Image, ImageOps


def _check_size(arg, value):
    pair = (value, value) if isinstance(value, (int, np.integer)) else value
    ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in pair
    )
    if not ok or isinstance(value, bool):
        raise ValueError(f"`{arg}` must be a positive int or a (height, width) pair of positive "
                         f"ints; received {arg}={value!r}.")
    return int(pair[0]), int(pair[1])


def _open_rgb(path):
    """Opens ``path`` upright as a Pillow image in mode "RGB" (8-bit) or "F" (16-bit, 0-255)."""
    Image, ImageOps = _pil()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No image file at {os.fspath(path)!r}.")
    try:
        img = Image.open(path)
    except Image.UnidentifiedImageError as err:
        raise ValueError(f"{os.fspath(path)!r} is not an image file Pillow can read.") from err
    with img:
        try:
            img.load()
        except OSError as err:
            raise ValueError(f"Could not decode image {os.fspath(path)!r}: {err}") from err
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img, path)


def _to_rgb(img, path):
    Image, _ = _pil()
    if img.mode not in _SUPPORTED_MODES:
        raise ValueError(f"Image {os.fspath(path)!r} has Pillow mode {img.mode!r}; supported "
                         f"modes: {_SUPPORTED_MODES}.")
    if img.mode in _HIGH_DEPTH_MODES:
        # Scale the 16-bit range linearly to 0-255 (Pillow's convert("L") would clip at 255).
        values = np.clip(np.asarray(img, dtype=np.float32), 0, 65535) * np.float32(255 / 65535)
        return Image.fromarray(values)  # mode "F"
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        # Composite on white: the colour under transparent pixels is arbitrary (often black).
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _resize_and_crop(img, resize, size, resample, path):
    """Shorter side -> ``resize`` (torchvision's rounding), then a centred ``size`` crop."""
    width, height = img.size
    short, long = sorted((width, height))
    new_long = int(resize * long / short)
    new_w, new_h = (resize, new_long) if width <= height else (new_long, resize)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), resample=resample)
    crop_h, crop_w = size
    if crop_h > new_h or crop_w > new_w:
        raise ValueError(
            f"Image {os.fspath(path)!r} resized to {new_h}x{new_w} (resize={resize}) is smaller "
            f"than the crop size={size}; use a larger `resize`."
        )
    top = int(round((new_h - crop_h) / 2.0))
    left = int(round((new_w - crop_w) / 2.0))
    return img.crop((left, top, left + crop_w, top + crop_h))


def load_images(paths, size=None, resize=None, interpolation=None, *, weights=None, model=None):
    """Loads image files as a float32 RGB batch, the way ImageNet evaluation transforms do.

    Each image is turned upright (EXIF orientation), converted to RGB, resized so that its
    shorter side equals ``resize`` and center-cropped to ``size``. Conversions: grayscale,
    1-bit, palette and CMYK images become RGB; transparent images (LA, RGBA, palette with
    transparency) are composited on a white background; 16-bit images (I;16, I) are scaled
    linearly from 0-65535 to 0-255 without rounding.

    Args:
        paths: a path (``str`` or ``os.PathLike``) or a sequence of paths.
        size: crop size, an int or a ``(height, width)`` pair. Defaults to 224.
        resize: target length of the shorter side before cropping; defaults to ``max(size)``.
        interpolation: a Pillow filter name, one of ``INTERPOLATIONS``. Defaults to bilinear.
        weights: a weights tag (e.g. ``"tv2"``): take ``size``, ``resize`` and ``interpolation``
            from that tag's eval transform in the manifest (explicit arguments still win).
        model: the model name the tag belongs to; needed when the tag's transform differs
            between models.

    Returns:
        ``float32`` array of shape ``(len(paths), height, width, 3)`` with values in 0-255.
    """
    single = isinstance(paths, (str, os.PathLike))
    paths = [paths] if single else list(paths) if isinstance(paths, Sequence) else None
    if not paths or not all(isinstance(p, (str, os.PathLike)) for p in paths):
        raise ValueError("`paths` must be a path or a non-empty sequence of paths (str or "
                         "os.PathLike).")
    if weights is not None:
        transform = eval_transform(weights, model)
        size = transform.crop if size is None else size
        resize = transform.resize if resize is None else resize
        interpolation = interpolation or transform.interpolation
    size = _check_size("size", DEFAULT_SIZE if size is None else size)
    interpolation = interpolation or "bilinear"
    if resize is None:
        resize = max(size)
    elif isinstance(resize, bool) or not isinstance(resize, (int, np.integer)) or resize < 1:
        raise ValueError(f"`resize` must be a positive int (the shorter side's length); "
                         f"received resize={resize!r}.")
    _check_choice("interpolation", interpolation, INTERPOLATIONS)
    Image, _ = _pil()
    resample = getattr(Image.Resampling, interpolation.upper())
    batch = np.empty((len(paths),) + size + (3,), dtype=np.float32)
    for i, path in enumerate(paths):
        img = _resize_and_crop(_open_rgb(path), resize, size, resample, path)
        pixels = np.asarray(img, dtype=np.float32)
        batch[i] = pixels[..., None] if pixels.ndim == 2 else pixels
    return batch


def eval_transform(weights, model=None):
    """The eval transform (resize, crop, interpolation) of a weights tag, from the manifest."""
    from keras_vggres.weights import manifest

    if model is not None:
        return manifest.get_weights(model, weights).transform
    found = {manifest.get_weights(name, weights).transform
             for name in manifest.load_manifest() if manifest.is_known_tag(name, weights)}
    if len(found) != 1:
        raise ValueError(f"Cannot tell the eval transform of weights={weights!r} without a model "
                         f"({len(found)} different transforms); pass `model=` too.")
    return found.pop()


def get_preprocessing(model, weights="imagenet"):
    """The `preprocess_input` function matching `model`'s weights tag (e.g. torch for "tv1")."""
    from keras_vggres.weights import manifest

    return make_preprocess_input(manifest.get_weights(model, weights).preprocess)
