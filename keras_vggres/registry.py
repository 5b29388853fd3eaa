"""Every model by name: builder, family, stages, default size; `list_models` and `get_model`."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from keras_vggres.models import resnet, vgg


@dataclass(frozen=True)
class ModelSpec:
    """One registered model; `stages` are the names used by freezing and feature taps."""

    name: str
    family: str
    builder: Callable
    stages: tuple
    params: int             # with the 1000-class top, default variant (tests check it)
    default_size: int = 224


MODELS = {spec.name: spec for spec in (
    ModelSpec("vgg11", "vgg", vgg.VGG11, vgg.VGG_STAGES, 132_863_336),
    ModelSpec("vgg13", "vgg", vgg.VGG13, vgg.VGG_STAGES, 133_047_848),
    ModelSpec("vgg16", "vgg", vgg.VGG16, vgg.VGG_STAGES, 138_357_544),
    ModelSpec("vgg19", "vgg", vgg.VGG19, vgg.VGG_STAGES, 143_667_240),
    ModelSpec("vgg11_bn", "vgg", vgg.VGG11BN, vgg.VGG_STAGES, 132_874_344),
    ModelSpec("vgg13_bn", "vgg", vgg.VGG13BN, vgg.VGG_STAGES, 133_059_624),
    ModelSpec("vgg16_bn", "vgg", vgg.VGG16BN, vgg.VGG_STAGES, 138_374_440),
    ModelSpec("vgg19_bn", "vgg", vgg.VGG19BN, vgg.VGG_STAGES, 143_689_256),
    ModelSpec("resnet18", "resnet", resnet.ResNet18, resnet.RESNET_STAGES, 11_699_112),
    ModelSpec("resnet34", "resnet", resnet.ResNet34, resnet.RESNET_STAGES, 21_814_696),
    ModelSpec("resnet50", "resnet", resnet.ResNet50, resnet.RESNET_STAGES, 25_636_712),
    ModelSpec("resnet101", "resnet", resnet.ResNet101, resnet.RESNET_STAGES, 44_707_176),
    ModelSpec("resnet152", "resnet", resnet.ResNet152, resnet.RESNET_STAGES, 60_419_944),
    ModelSpec("resnet50v2", "resnet_v2", resnet.ResNet50V2, resnet.RESNET_V2_STAGES, 25_613_800),
    ModelSpec("resnet101v2", "resnet_v2", resnet.ResNet101V2, resnet.RESNET_V2_STAGES, 44_675_560),
    ModelSpec("resnet152v2", "resnet_v2", resnet.ResNet152V2, resnet.RESNET_V2_STAGES, 60_380_648),
)}


def get_spec(name):
    """The ModelSpec for `name` (case-insensitive); unknown names raise with close matches."""
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a model name string; received {name!r}.")
    key = name.lower()
    if key not in MODELS:
        close = difflib.get_close_matches(key, MODELS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown model name={name!r}.{hint} Available models: {tuple(MODELS)}.")
    return MODELS[key]


def get_model(name, **kwargs):
    """Build a registered model by name, e.g. `get_model("resnet50", weights=None)`."""
    return get_spec(name).builder(**kwargs)


def list_models():
    """One row per model: name, family, default size, parameters, default weights, weight tags."""
    from keras_vggres.weights import manifest

    return [{"name": spec.name, "family": spec.family, "default_size": spec.default_size,
             "params": spec.params, "default_weights": manifest.resolve_tag(spec.name, "imagenet"),
             "weights": tuple(manifest.list_weights(spec.name)), "stages": spec.stages}
            for spec in MODELS.values()]
