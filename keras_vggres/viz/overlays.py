"""Heatmaps coloured and blended over their image, as RGB uint8 arrays and PNG files.

NumPy and Pillow only: matplotlib's colormaps are used when matplotlib is installed, and a
built-in copy of its "jet" (same segments, same 256-entry table) otherwise, so an overlay never
needs matplotlib or Keras.
"""

from __future__ import annotations

import io
import os

import numpy as np

from keras_vggres._atomic import write_bytes
from keras_vggres._checks import check_number

# matplotlib's "jet": (x, value) break points per channel (`matplotlib._cm._jet_data`).
JET_SEGMENTS = (
    ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),              # red
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),  # green
    ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),              # blue
)
LUT_SIZE = 256  # matplotlib's default colormap resolution
BUILTIN_COLORMAPS = ("jet",)


def builtin_jet(values):
    """matplotlib's "jet" without matplotlib: values in [0, 1] -> RGB floats in [0, 1]."""
    x = np.linspace(0.0, 1.0, LUT_SIZE)
    lut = np.stack([np.interp(x, [p[0] for p in seg], [p[1] for p in seg])
                    for seg in JET_SEGMENTS], axis=-1)
    index = np.clip((np.asarray(values, dtype=np.float64) * LUT_SIZE).astype(np.int64),
                    0, LUT_SIZE - 1)
    return lut[index]


def get_colormap(colormap):
    """A function values in [0, 1] -> RGB(A) floats: a matplotlib colormap by name when
    matplotlib is installed, else a built-in one; a callable is returned as is."""
    if callable(colormap):
        return colormap
    if not isinstance(colormap, str):
        raise TypeError(f"`colormap` must be a colormap name or a callable; received "
                        f"colormap={colormap!r}.")
    try:
        import matplotlib
    except ImportError:
        if colormap == "jet":
            return builtin_jet
        raise ValueError(f"`colormap` must be one of {BUILTIN_COLORMAPS} without matplotlib "
                         f"(pip install matplotlib for all of its colormaps); received "
                         f"colormap={colormap!r}.") from None
    if colormap not in matplotlib.colormaps:
        raise ValueError(f"`colormap` must be a matplotlib colormap name such as 'jet', "
                         f"'turbo', 'inferno' or 'viridis'; received colormap={colormap!r}.")
    return matplotlib.colormaps[colormap]


def colorize(heatmap, colormap="jet"):
    """A 2D heatmap in [0, 1] (NaN counts as 0) -> RGB uint8 (H, W, 3) through `colormap`."""
    heat = np.asarray(heatmap, dtype=np.float64)
    if heat.ndim != 2:
        raise ValueError(f"`heatmap` must be a 2D array (height, width); received shape "
                         f"{heat.shape}.")
    heat = np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)
    colours = np.asarray(get_colormap(colormap)(heat), dtype=np.float64)[..., :3]
    return np.round(np.clip(colours, 0.0, 1.0) * 255).astype(np.uint8)


def overlay(image, heatmap, alpha=0.4, colormap="jet"):
    """Blend a coloured heatmap over an image: `(1 - alpha) * image + alpha * colours`.

    Args:
        image: RGB 0-255, uint8 or float, (H, W, 3); grayscale (H, W) or (H, W, 1) too.
        heatmap: a 2D map in [0, 1] (e.g. from `gradcam`); resized to the image (bilinear)
            when its size differs.
        alpha: weight of the colours, in [0, 1]: 0 gives the image, 1 the coloured map.
        colormap: a matplotlib colormap name (the built-in "jet" without matplotlib) or a
            callable mapping [0, 1] to RGB(A) floats.

    Returns:
        An RGB uint8 array (H, W, 3).
    """
    alpha = check_number("alpha", alpha, low=0.0, high=1.0)
    rgb = _rgb(image)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim == 2 and heat.shape != rgb.shape[:2]:
        heat = _resize(heat, rgb.shape[:2])
    blended = (1.0 - alpha) * rgb + alpha * colorize(heat, colormap).astype(np.float64)
    return np.round(np.clip(blended, 0, 255)).astype(np.uint8)


def save_overlay(path, image, heatmap, alpha=0.4, colormap="jet"):
    """Write `overlay(image, heatmap, alpha, colormap)` as a PNG, atomically; returns `path`."""
    return save_png(path, overlay(image, heatmap, alpha, colormap))


def save_png(path, rgb):
    """Write an RGB uint8 array as a PNG (temporary file + rename), creating its folder."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format="PNG")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return write_bytes(path, buffer.getvalue())


def _rgb(image):
    pixels = np.asarray(image, dtype=np.float64)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"`image` must be an RGB (H, W, 3) or grayscale (H, W) array; "
                         f"received shape {np.shape(image)}.")
    return np.clip(np.nan_to_num(pixels), 0, 255)


def _resize(heat, size):
    from PIL import Image

    height, width = size
    image = Image.fromarray(np.ascontiguousarray(heat, dtype=np.float32))  # mode "F"
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)
