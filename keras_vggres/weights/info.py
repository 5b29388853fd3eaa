"""What a model knows about its weights: tag, source, preprocessing, eval transform, class names.

Builders attach a `WeightsInfo` to every model they make (from the manifest record of a tag, or
stating what was assumed for a file or random weights); `classifier`, `finetune` and
`optimize_for_inference` carry it over. `weights_info(model)` reads it, and the image side
(`load_images(model=m)`, `get_preprocessing(m)`, `embed`, `extract`, `classify`, `predict`)
follows it, so a tag's preprocessing and transform cannot be mixed with another tag's through
the documented path. Keras-free: it only reads attributes of the model object.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from keras_vggres.transforms import PREPROCESS_MODES, Transform

ATTRIBUTE = "_keras_vggres_weights"
SOURCES = ("keras", "torchvision", "custom", "file", "random", "unknown")
IMAGENET = "imagenet"


@dataclass(frozen=True)
class WeightsInfo:
    """The weights of one model and what their images must go through.

    `assumed` names the fields that were not known but assumed (a file's preprocessing, a
    reloaded model's transform); `class_names` is None when the head is not known (a new head).
    """

    model: str | None
    tag: str | None
    source: str
    preprocess: str | None
    transform: Transform
    class_names: tuple | None = None
    metrics: dict = field(default_factory=dict)
    variant: str | None = None
    file: str | None = None
    input_channels: int = 3
    adaptation: str | None = None
    assumed: tuple = ()
    notes: str | None = None

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def as_dict(self):
        """JSON-ready, with the class names in full (use `summary()` for a short view)."""
        out = dataclasses.asdict(self)
        out["transform"] = self.transform.as_dict()
        out["class_names"] = None if self.class_names is None else list(self.class_names)
        out["assumed"] = list(self.assumed)
        return out

    @classmethod
    def from_dict(cls, raw):
        transform = raw["transform"]
        crop = transform["crop"]
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values.update(transform=Transform(transform["resize"],
                                          crop if isinstance(crop, int) else tuple(crop),
                                          transform["interpolation"]),
                      class_names=None if raw.get("class_names") is None
                      else tuple(raw["class_names"]),
                      assumed=tuple(raw.get("assumed") or ()),
                      metrics=dict(raw.get("metrics") or {}))
        return cls(**values)

    def summary(self):
        """One line: model, tag/source, preprocessing, transform, classes, assumptions."""
        t = self.transform
        classes = ("?" if self.class_names is None else f"{len(self.class_names)} classes")
        assumed = f"; assumed: {', '.join(self.assumed)}" if self.assumed else ""
        weights = self.tag or self.file or self.source
        return (f"{self.model or 'model'} weights={weights} ({self.source}), preprocess="
                f"{self.preprocess}, transform resize {t.resize} -> crop {t.crop} "
                f"{t.interpolation}, {classes}{assumed}")

    def __repr__(self):
        return f"WeightsInfo({self.summary()})"


# ----------------------------------------------------------------------------- attaching
def attach(model, info):
    """Record `info` on `model` (a plain attribute: it lives as long as the Python object)."""
    object.__setattr__(model, ATTRIBUTE, info)
    return model


def attached(model):
    """The `WeightsInfo` attached to `model` itself, or None."""
    return getattr(model, ATTRIBUTE, None)


def weights_info(model):
    """The `WeightsInfo` of a model: attached by the builder, or found in a nested backbone
    (with its head's class names unknown), or inferred from the model's own layers (with the
    inferred fields listed in `assumed`).

    Args:
        model: a Keras model (built by keras_vggres, wrapped, reloaded or foreign).
    """
    info = attached(model)
    if info is not None:
        return info
    for inner in _nested_models(model):
        info = attached(inner)
        if info is not None:
            return info.replace(class_names=None)
    return _inferred(model)


def _nested_models(model):
    pending = [layer for layer in getattr(model, "layers", ()) if hasattr(layer, "layers")]
    while pending:
        inner = pending.pop(0)
        yield inner
        pending += [layer for layer in inner.layers if hasattr(layer, "layers")]


def _inferred(model):
    """What can be read off a model with no record: its in-model preprocessing, if any."""
    from keras_vggres.preprocessing import mode_of_layer, preprocessing_layer

    layer = preprocessing_layer(model)
    mode = mode_of_layer(layer) if layer is not None else None
    crop = _input_size(model)
    transform = Transform(int(round(max(crop) * 256 / 224)), crop if crop[0] != crop[1]
                          else crop[0], "bilinear")
    return WeightsInfo(model=None, tag=None, source="unknown", preprocess=mode,
                       transform=transform, class_names=None,
                       assumed=("transform",) + (() if mode else ("preprocess",)),
                       notes="no weights record: the model was reloaded or not built by "
                             "keras_vggres; preprocessing read from its layers")


def _input_size(model):
    """(height, width) of a model's static input, else (224, 224)."""
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else ()
    channels_first = len(shape) == 4 and shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4)
    spatial = tuple(shape[2:4] if channels_first else shape[1:3])
    if len(spatial) == 2 and all(isinstance(d, int) for d in spatial):
        return spatial
    return (224, 224)


# ----------------------------------------------------------------------------- records
def from_record(record, *, include_top=True, classes=1000):
    """The `WeightsInfo` of a manifest record (`manifest.WeightsRecord`)."""
    return WeightsInfo(
        model=record.model, tag=record.tag, source=record.source,
        preprocess=record.preprocess, transform=record.transform,
        class_names=_imagenet_names() if include_top and classes == 1000 else None,
        metrics=dict(record.metrics), variant=record.variant)


def for_file(model_name, path, default_record, *, variant, preprocess, include_top, classes):
    """A model built from a weights file: what is assumed about it, stated."""
    return WeightsInfo(
        model=model_name, tag=None, source="file", file=str(path), variant=variant,
        preprocess=preprocess, transform=default_record.transform,
        class_names=_imagenet_names() if include_top and classes == 1000 else None,
        assumed=("preprocess", "transform") + (("class_names",) if include_top else ()),
        notes=f"built from a weights file: preprocessing and eval transform assumed from the "
              f"{default_record.tag!r} weights of {model_name}")


def for_random(model_name, default_record, *, variant, preprocess):
    """Random weights: nothing known; the model's default weights' conventions are assumed."""
    return WeightsInfo(
        model=model_name, tag=None, source="random", variant=variant, preprocess=preprocess,
        transform=default_record.transform, class_names=None,
        assumed=("preprocess", "transform"),
        notes="random weights (weights=None): predictions mean nothing until trained")


def _imagenet_names():
    from keras_vggres.decoding import class_names

    return class_names()


# ----------------------------------------------------------------------------- the image side
def transform_for(*, model=None, weights=None):
    """The eval `Transform` for a model object, a WeightsInfo, or a model name + tag."""
    if isinstance(weights, WeightsInfo):
        return weights.transform
    if model is not None and not isinstance(model, str):
        info = weights_info(model)
        return scaled_to(info.transform, _input_size(model) if attached(model) or
                         info.source != "unknown" else None)
    from keras_vggres.weights import manifest

    tag = weights or IMAGENET
    if model is not None:
        return manifest.get_weights(_model_name(model), tag).transform
    found = {manifest.get_weights(name, tag).transform
             for name in manifest.load_manifest() if manifest.is_known_tag(name, tag)}
    if len(found) != 1:
        raise ValueError(f"Cannot tell the eval transform of weights={tag!r} without a model "
                         f"({len(found)} different transforms); pass `model=` too.")
    return found.pop()


def scaled_to(transform, size):
    """`transform` for an input of `size` (height, width): resize scaled by the same ratio."""
    if size is None or tuple(size) == transform.crop_size:
        return transform
    ratio = transform.resize / max(transform.crop_size)
    crop = size[0] if size[0] == size[1] else tuple(size)
    return Transform(int(round(max(size) * ratio)), crop, transform.interpolation)


def preprocess_mode_for(model, weights=IMAGENET):
    """(mode name, in-model?) for a model object, or for a model name + weights tag."""
    if not isinstance(model, str):
        from keras_vggres.preprocessing import preprocessing_layer

        if preprocessing_layer(model) is not None:
            return weights_info(model).preprocess, True
        info = weights_info(model)
        if info.preprocess is None:
            raise ValueError(
                f"Model {getattr(model, 'name', model)!r} has no weights record and no "
                "in-model preprocessing: its preprocessing is unknown. Pass a mode to "
                f"`keras_vggres.preprocess_input(x, mode=...)`, one of {tuple(PREPROCESS_MODES)}.")
        return info.preprocess, False
    from keras_vggres.weights import manifest

    return manifest.get_weights(_model_name(model), weights).preprocess, False


def _model_name(name):
    """A registry model name, case-insensitive (unknown names raise with the known ones)."""
    from keras_vggres._checks import check_choice
    from keras_vggres.models.specs import MODEL_FAMILIES

    return check_choice("model", str(name).lower(), tuple(MODEL_FAMILIES))


def get_preprocessing(model, weights=IMAGENET):
    """The function to apply to RGB 0-255 images before calling `model`.

    Args:
        model: a Keras model (its weights decide: `weights_info`); or a model name, with
            `weights` a tag of it (e.g. `get_preprocessing("resnet50", weights="tv2")`).
        weights: the tag, when `model` is a name (ignored for a model object).

    Returns:
        `preprocess_input(x, data_format=None)` for the weights' mode (for a model with C != 3
        input channels, the channel-mean version of it); for a model that preprocesses inside
        (`include_preprocessing=True`), the identity (`.mode == "raw"`), so images are never
        preprocessed twice.
    """
    from keras_vggres.preprocessing import make_preprocess_input

    mode, inside = preprocess_mode_for(model, weights)
    if inside:
        return _raw
    channels = 3 if isinstance(model, str) else weights_info(model).input_channels
    if channels == 3:
        return make_preprocess_input(mode)
    return make_preprocess_input(mode, spec=PREPROCESS_MODES[mode].for_channels(channels))


def _raw(x, data_format=None):
    """Identity: the model preprocesses its raw RGB 0-255 input itself."""
    return x


_raw.mode = "raw"
