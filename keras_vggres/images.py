"""Image files -> float32 RGB arrays, as ImageNet evaluation transforms make them (Pillow).

One implementation serves every path that reads images: `load_images` (classify, embed,
extract, predict) and the tf.data pipelines of `transfer.datasets` (which call `load_image`
through `tf.numpy_function`), so training and inference see exactly the same pixels. The
geometry (shorter side -> resize, centre crop, rounding) is `transforms.Transform`'s.

Images are untrusted input: the size in the header is checked against `MAX_PIXELS` and
`MAX_ASPECT_RATIO` before anything is decoded, and the resized size against `MAX_PIXELS`
before resizing, so a tiny file claiming a huge or extremely thin image costs nothing.
"""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np

from keras_vggres._checks import check_choice, is_int
from keras_vggres.transforms import DEFAULT_SIZE, INTERPOLATIONS, Transform

# Decoded pixels allowed (50 MP: e.g. 8660 x 5773; an RGB decode costs 150 MB, a 16-bit one
# ~500 MB with its float copy). Resized images obey the same bound.
MAX_PIXELS = 50_000_000
# Longest side / shortest side allowed: wide panoramas pass, a 1 x 100000 strip does not.
MAX_ASPECT_RATIO = 50

ALPHA_MODES = ("LA", "PA", "RGBA")
PLAIN_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr")
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit data: 0-65535
SUPPORTED_MODES = PLAIN_MODES + ALPHA_MODES + HIGH_DEPTH_MODES


class ImageTooLargeError(ValueError):
    """An image whose declared or resized size is beyond `MAX_PIXELS` / `MAX_ASPECT_RATIO`."""


def _pil():
    from PIL import Image, ImageOps  # Pillow is imported only when images are loaded

    return Image, ImageOps


def check_size(arg, value):
    """An int or a (height, width) pair of positive ints -> (height, width)."""
    pair = (value, value) if is_int(value) else value
    ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(
        is_int(v) and v > 0 for v in pair)
    if not ok:
        raise ValueError(f"`{arg}` must be a positive int or a (height, width) pair of positive "
                         f"ints; received {arg}={value!r}.")
    return int(pair[0]), int(pair[1])


def check_header(width, height, path):
    """Refuse a declared size beyond the limits, before the image is decoded."""
    name = os.fspath(path)
    if width < 1 or height < 1:
        raise ValueError(f"Image {name!r} declares an empty size {width}x{height}.")
    if width * height > MAX_PIXELS:
        raise ImageTooLargeError(
            f"Image {name!r} is {width}x{height} = {width * height:,} pixels; at most "
            f"MAX_PIXELS={MAX_PIXELS:,} are decoded (raise keras_vggres.images.MAX_PIXELS to "
            "accept it).")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageTooLargeError(
            f"Image {name!r} is {width}x{height}: its aspect ratio exceeds "
            f"MAX_ASPECT_RATIO={MAX_ASPECT_RATIO}; resizing its shorter side would make an "
            "enormous image.")


def open_rgb(path):
    """Opens ``path`` upright as a Pillow image in mode "RGB" (8-bit) or "F" (16-bit, 0-255)."""
    Image, ImageOps = _pil()
    name = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No image file at {name!r}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.UnidentifiedImageError as err:
        raise ValueError(f"{name!r} is not an image file Pillow can read.") from err
    except Image.DecompressionBombError:
        raise ImageTooLargeError(
            f"Image {name!r} declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels (Pillow's "
            f"decompression-bomb limit); at most MAX_PIXELS={MAX_PIXELS:,} are decoded.") from None
    except OSError as err:
        raise ValueError(f"Could not read image {name!r}: {err}") from err
    with img:
        check_header(*img.size, path)
        try:
            img.load()
        except (OSError, SyntaxError, EOFError, ValueError) as err:
            raise ValueError(f"Could not decode image {name!r}: {err}") from err
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img, path)


def _to_rgb(img, path):
    Image, _ = _pil()
    if img.mode not in SUPPORTED_MODES:
        raise ValueError(f"Image {os.fspath(path)!r} has Pillow mode {img.mode!r}; supported "
                         f"modes: {SUPPORTED_MODES}.")
    if img.mode in HIGH_DEPTH_MODES:
        # Scale the 16-bit range linearly to 0-255 (Pillow's convert("L") would clip at 255).
        values = np.clip(np.asarray(img, dtype=np.float32), 0, 65535) * np.float32(255 / 65535)
        return Image.fromarray(values)  # mode "F"
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ALPHA_MODES:
        # Composite on white: the colour under transparent pixels is arbitrary (often black).
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def resize_and_crop(img, transform, path):
    """The transform's geometry on a Pillow image: shorter side -> resize, centre crop."""
    Image, _ = _pil()
    width, height = img.size
    new_h, new_w = transform.resized_shape(height, width)
    if new_h * new_w > MAX_PIXELS:
        raise ImageTooLargeError(
            f"Image {os.fspath(path)!r} ({width}x{height}) resized to {new_w}x{new_h} would "
            f"exceed MAX_PIXELS={MAX_PIXELS:,}; use a smaller `resize`.")
    if (new_w, new_h) != (width, height):
        resample = getattr(Image.Resampling, transform.interpolation.upper())
        img = img.resize((new_w, new_h), resample=resample)
    top, left, crop_h, crop_w = transform.crop_box(new_h, new_w)
    if crop_h > new_h or crop_w > new_w:
        raise ValueError(
            f"Image {os.fspath(path)!r} resized to {new_h}x{new_w} (resize={transform.resize}) "
            f"is smaller than the crop size={(crop_h, crop_w)}; use a larger `resize`.")
    return img.crop((left, top, left + crop_w, top + crop_h))


def to_array(img, channels=3):
    """A Pillow RGB, L or F image -> float32 (height, width, channels), values 0-255."""
    pixels = np.asarray(img, dtype=np.float32)
    if pixels.ndim == 2:
        return pixels[..., None] if channels == 1 else np.repeat(pixels[..., None], 3, axis=-1)
    return pixels


def load_image(path, transform, channels=3):
    """One image file -> float32 (crop height, crop width, channels) 0-255 through `transform`:
    RGB, or grey (Pillow's luma, ITU-R 601) for `channels=1`."""
    img = open_rgb(path)
    if channels == 1 and img.mode == "RGB":
        img = img.convert("L")
    return to_array(resize_and_crop(img, transform, path), channels)


def make_transform(size=None, resize=None, interpolation=None):
    """A checked `Transform` from `load_images`' arguments (resize defaults to max(size))."""
    size = check_size("size", DEFAULT_SIZE if size is None else size)
    if resize is None:
        resize = max(size)
    elif not (is_int(resize) and resize >= 1):
        raise ValueError(f"`resize` must be a positive int (the shorter side's length); "
                         f"received resize={resize!r}.")
    interpolation = interpolation or "bilinear"
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    return Transform(int(resize), size, interpolation)


def load_images(paths, size=None, resize=None, interpolation=None, *, weights=None, model=None,
                channels=None):
    """Loads image files as a float32 RGB batch, the way ImageNet evaluation transforms do.

    Each image is turned upright (EXIF orientation), converted to RGB, resized so that its
    shorter side equals ``resize`` and center-cropped to ``size``. Conversions: grayscale,
    1-bit, palette and CMYK images become RGB; transparent images (LA, RGBA, palette with
    transparency) are composited on a white background; 16-bit images (I;16, I) are scaled
    linearly from 0-65535 to 0-255 without rounding.

    With ``model=`` (a model built by keras_vggres, or a model name with ``weights=``) the
    transform is the weights' own eval transform (e.g. 232 -> 224 for torchvision's V2
    ResNet50 weights, 256 -> 224 for most others), scaled to the model's input size if it differs from the crop.
    Explicit ``size``, ``resize`` and ``interpolation`` still win.

    Args:
        paths: a path (``str`` or ``os.PathLike``) or a sequence of paths.
        size: crop size, an int or a ``(height, width)`` pair. Defaults to 224.
        resize: target length of the shorter side before cropping; defaults to ``max(size)``.
        interpolation: a Pillow filter name, one of ``INTERPOLATIONS``. Defaults to bilinear.
        weights: a weights tag (e.g. ``"tv2"``; needs ``model`` as a name when the tag's
            transform differs between models) or a `WeightsInfo`.
        model: a Keras model built by keras_vggres (its weights decide), or a model name.
        channels: 3 (RGB) or 1 (grey); default: the model's input channels, else 3.

    Returns:
        ``float32`` array of shape ``(len(paths), height, width, channels)``, values 0-255.
    """
    single = isinstance(paths, (str, os.PathLike))
    paths = [paths] if single else list(paths) if isinstance(paths, Sequence) else None
    if not paths or not all(isinstance(p, (str, os.PathLike)) for p in paths):
        raise ValueError("`paths` must be a path or a non-empty sequence of paths (str or "
                         "os.PathLike).")
    transform = resolve_transform(size, resize, interpolation, weights=weights, model=model)
    if channels is None:
        channels = 3
        if model is not None and not isinstance(model, str):
            from keras_vggres.weights.info import weights_info

            channels = weights_info(model).input_channels
    check_choice("channels", channels, (1, 3))
    batch = np.empty((len(paths),) + transform.crop_size + (channels,), dtype=np.float32)
    for i, path in enumerate(paths):
        batch[i] = load_image(path, transform, channels)
    return batch


def resolve_transform(size=None, resize=None, interpolation=None, *, weights=None, model=None):
    """The `Transform` for `load_images`' arguments: explicit values over the weights' own."""
    if weights is None and model is None:
        return make_transform(size, resize, interpolation)
    from keras_vggres.weights.info import transform_for

    own = transform_for(model=model, weights=weights)
    if size is None and resize is None:
        size, resize = own.crop_size, own.resize
    elif size is not None and resize is None:
        size = check_size("size", size)
        resize = int(round(max(size) * own.resize / max(own.crop_size)))
    return make_transform(size if size is not None else own.crop_size, resize,
                          interpolation or own.interpolation)
