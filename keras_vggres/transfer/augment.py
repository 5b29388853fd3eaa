"""Training-time augmentation: batch-level Keras layers, or decode-time random resized crops.

`AUGMENTATIONS` names the built-in choices; a callable on image batches (0-255) is accepted
too. "random_resized_crop" is torchvision's ImageNet training recipe (RandomResizedCrop with
scale (0.08, 1) and ratio (3/4, 4/3), then a random horizontal flip); it crops the full-size
decoded image, so it runs at decode time, per image, with Pillow, seeded per image and epoch.
"""

from __future__ import annotations

import math

import numpy as np

from keras_vggres._checks import AUGMENTATIONS, check_choice



def make_augment(augment, seed):
    """None, a function `images -> images` on training batches, or a `DecodeTimeAugment`."""
    if augment in (False, None):
        return None
    if callable(augment):
        return augment
    check_choice("augment", augment, AUGMENTATIONS + ("a callable",))
    if augment == "random_resized_crop":
        return RandomResizedCrop()
    import keras

    layers = [keras.layers.RandomFlip("horizontal", seed=seed)]
    if augment == "basic":
        layers += [keras.layers.RandomRotation(0.05, fill_mode="reflect", seed=seed),
                   keras.layers.RandomZoom(0.1, fill_mode="reflect", seed=seed)]
    return keras.Sequential(layers, name=f"{augment}_augmentation")


def describe(augment):
    """A stable, JSON-able description of `augment` (a callable by its qualified name)."""
    if augment in (False, None) or isinstance(augment, str):
        return augment
    name = getattr(augment, "__qualname__", None) or type(augment).__qualname__
    layer = getattr(augment, "name", None)
    return f"callable:{getattr(augment, '__module__', '')}.{name}" + (f"[{layer}]" if layer else "")


class DecodeTimeAugment:
    """An augmentation applied while a file is decoded: `load(path, transform, seed)`."""

    def load(self, path, transform, seed):  # pragma: no cover - interface
        raise NotImplementedError


class RandomResizedCrop(DecodeTimeAugment):
    """torchvision's RandomResizedCrop + RandomHorizontalFlip, on the decoded image."""

    def __init__(self, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip=True):
        self.scale, self.ratio, self.flip = tuple(scale), tuple(ratio), flip

    def load(self, path, transform, seed):
        from PIL import Image

        from keras_vggres.images import open_rgb, to_array

        rng = np.random.default_rng(np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
        img = open_rgb(path)
        top, left, height, width = self.box(img.size[1], img.size[0], rng)
        crop_h, crop_w = transform.crop_size
        resample = getattr(Image.Resampling, transform.interpolation.upper())
        img = img.resize((crop_w, crop_h), resample=resample,
                         box=(left, top, left + width, top + height))
        if self.flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_array(img)

    def box(self, height, width, rng):
        """(top, left, height, width) of a random crop, as torchvision's `get_params`."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)),
                        h, w)
        in_ratio = width / height  # fallback: the centre crop with the ratio clamped
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w
