"""What an image goes through before a network: preprocessing modes and eval transforms.

The vocabulary every other module uses (the manifest validates against it, the weights record
carries it, the preprocessing function and layers apply it, image loading follows it), with no
Keras, TensorFlow or Pillow import: a leaf module, so nothing can form an import cycle through it.
`Transform` also owns the one resize + centre-crop geometry (one rounding rule) that every image
path uses.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SIZE = 224
# Pillow resampling filter names accepted by image loading and by manifest transforms.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
# Without a weights record: torchvision's convention, shorter side = crop * 256 / 224.
DEFAULT_RESIZE_RATIO = 256 / 224


@dataclass(frozen=True)
class PreprocessMode:
    """One preprocessing recipe: ``((x[channel_order] / divisor) - mean) / std``.

    ``mean`` and ``std`` are listed in the output channel order; ``std=None`` means no division.
    """

    channel_order: str  # "RGB" keeps the input order, "BGR" reverses the channel axis
    divisor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float] | None = None

    @property
    def flips_channels(self):
        return self.channel_order == "BGR"

    def scale_offset(self):
        """Per-channel ``(scale, offset)`` with ``y = x * scale + offset`` (output order).

        The same map as the recipe, as one affine step, which Keras' standard `Rescaling`
        layer applies exactly as written (so saved models need no custom layer).
        """
        std = self.std or (1.0,) * len(self.mean)
        scale = tuple(1.0 / (self.divisor * s) for s in std)
        offset = tuple(-m / s for m, s in zip(self.mean, std))
        return scale, offset

    def for_channels(self, channels):
        """The recipe for an image with `channels` channels: RGB as is; otherwise the
        channel-mean of the RGB constants, shared by every channel (no channel flip).

        A grey image replicated to RGB then sees the mean of what the three channels would
        see; models adapted to C != 3 inputs (first conv summed or repeated, as timm does)
        expect exactly that.
        """
        if channels == 3:
            return self
        mean = sum(self.mean) / 3
        std = None if self.std is None else sum(self.std) / 3
        return PreprocessMode("RGB", self.divisor, (mean,) * channels,
                              None if std is None else (std,) * channels)


PREPROCESS_MODES = {
    # Caffe (VGG16/19, ResNet v1): RGB -> BGR, subtract the BGR mean pixel, no scaling.
    "caffe": PreprocessMode("BGR", 1.0, (103.939, 116.779, 123.68)),
    # TF / Inception style (ResNet V2): scale to [-1, 1].
    "tf": PreprocessMode("RGB", 127.5, (1.0, 1.0, 1.0)),
    # torchvision: scale to [0, 1], then normalise with the ImageNet mean and std.
    "torch": PreprocessMode("RGB", 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass(frozen=True)
class Transform:
    """Evaluation transform: shorter side -> ``resize``, centre crop ``crop``, Pillow filter.

    ``crop`` is an int (square) or a ``(height, width)`` pair.
    """

    resize: int
    crop: int | tuple
    interpolation: str = "bilinear"

    @property
    def crop_size(self):
        """``(height, width)`` of the crop."""
        return (self.crop, self.crop) if isinstance(self.crop, int) else tuple(self.crop)

    def resized_shape(self, height, width):
        """``(height, width)`` after scaling the shorter side to ``resize``.

        torchvision's rule, in exact integer arithmetic: the longer side becomes
        ``floor(resize * long / short)``.
        """
        if height <= width:
            return self.resize, self.resize * width // height
        return self.resize * height // width, self.resize

    def crop_box(self, height, width):
        """``(top, left, crop height, crop width)`` of the centre crop of a resized image.

        Offsets round half to even, as torchvision's ``int(round((size - crop) / 2))``.
        """
        crop_h, crop_w = self.crop_size
        return _centre(height, crop_h), _centre(width, crop_w), crop_h, crop_w

    def as_dict(self):
        crop = self.crop if isinstance(self.crop, int) else list(self.crop)
        return {"resize": self.resize, "crop": crop, "interpolation": self.interpolation}


def default_transform(crop=DEFAULT_SIZE, interpolation="bilinear"):
    """The transform used without a weights record: resize = crop * 256 / 224 (rounded)."""
    crop_h, crop_w = (crop, crop) if isinstance(crop, int) else crop
    return Transform(int(round(max(crop_h, crop_w) * DEFAULT_RESIZE_RATIO)), crop, interpolation)


def _centre(size, crop):
    """``round((size - crop) / 2)`` with round-half-to-even, in integers."""
    half, odd = divmod(size - crop, 2)
    return half + (odd and half % 2)
