"""int8 calibration data -> the representative dataset that `TFLiteConverter` calibrates on.

Image files are loaded with the model's own eval transform (`load_images(paths, model=m)`),
so calibration sees exactly the pixels the deployed model will see, `CHUNK` images at a time
(memory stays bounded for large folders). Arrays are raw RGB 0-255, like the model's input.
"""

from __future__ import annotations

import os

import numpy as np

CHUNK = 32


def representative_dataset(model, calibration):
    """A callable yielding `[image batch of one]` (float32, raw RGB 0-255), checked up front.

    Args:
        model: the model being exported (its input size and eval transform decide).
        calibration: a folder of images (recursively), an image path, a list of image paths
            or folders, or an array (N, H, W, 3) of raw RGB 0-255.
    """
    if isinstance(calibration, np.ndarray):
        images = _checked_array(model, calibration)

        def from_array():
            for i in range(len(images)):
                yield [images[i:i + 1]]

        return from_array
    if not isinstance(calibration, (str, os.PathLike, list, tuple)):
        raise TypeError("`calibration` must be a folder, an image path, a list of them or a "
                        "NumPy array (N, H, W, 3); received an object of type "
                        f"{type(calibration).__name__}.")
    from keras_vggres.images import load_images
    from keras_vggres.transfer.runs import image_paths

    paths = image_paths(calibration)

    def from_files():
        for start in range(0, len(paths), CHUNK):
            batch = load_images(paths[start:start + CHUNK], model=model)
            for i in range(len(batch)):
                yield [batch[i:i + 1]]

    return from_files


def _checked_array(model, array):
    expected = tuple(model.inputs[0].shape[1:])
    shape = array.shape
    fits = len(shape) == 4 and len(array) > 0 and all(
        want is None or want == got for want, got in zip(expected, shape[1:]))
    if not fits or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"`calibration` as an array must be numeric, shaped (N >= 1,) + "
                         f"{expected} like the model's input; received shape {shape}, dtype "
                         f"{array.dtype}.")
    images = array.astype(np.float32)  # a copy: the caller's array is never changed
    if not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 255:
        raise ValueError("`calibration` must hold raw RGB values in 0-255 (the model's "
                         "preprocessing is inside it); received values in "
                         f"[{np.nanmin(images)}, {np.nanmax(images)}].")
    return images
