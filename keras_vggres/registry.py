"""Every model by name: builder, family, stages, default size; `list_models` and `get_model`.

Keras-free to import: builders are named here and imported on first use, so commands that only
print tables (`keras-vggres models`) never start TensorFlow.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from keras_vggres.models.specs import RESNET_STAGES, RESNET_V2_STAGES, VGG_STAGES, param_count


@dataclass(frozen=True)
class ModelSpec:
    """One registered model; `stages` are the names used by freezing and feature taps."""

    name: str
    family: str
    builder_name: str   # a builder of `keras_vggres.models`, imported on first use
    stages: tuple
    default_size: int = 224

    @property
    def builder(self):
        """The public builder function (e.g. `keras_vggres.models.VGG16`)."""
        from keras_vggres import models

        return getattr(models, self.builder_name)

    @property
    def params(self):
        """Parameters with the 1000-class top and the default variant, derived from specs."""
        return param_count(self.name)


MODELS = {spec.name: spec for spec in (
    ModelSpec("vgg11", "vgg", "VGG11", VGG_STAGES),
    ModelSpec("vgg13", "vgg", "VGG13", VGG_STAGES),
    ModelSpec("vgg16", "vgg", "VGG16", VGG_STAGES),
    ModelSpec("vgg19", "vgg", "VGG19", VGG_STAGES),
    ModelSpec("vgg11_bn", "vgg", "VGG11BN", VGG_STAGES),
    ModelSpec("vgg13_bn", "vgg", "VGG13BN", VGG_STAGES),
    ModelSpec("vgg16_bn", "vgg", "VGG16BN", VGG_STAGES),
    ModelSpec("vgg19_bn", "vgg", "VGG19BN", VGG_STAGES),
    ModelSpec("resnet18", "resnet", "ResNet18", RESNET_STAGES),
    ModelSpec("resnet34", "resnet", "ResNet34", RESNET_STAGES),
    ModelSpec("resnet50", "resnet", "ResNet50", RESNET_STAGES),
    ModelSpec("resnet101", "resnet", "ResNet101", RESNET_STAGES),
    ModelSpec("resnet152", "resnet", "ResNet152", RESNET_STAGES),
    ModelSpec("resnet50v2", "resnet_v2", "ResNet50V2", RESNET_V2_STAGES),
    ModelSpec("resnet101v2", "resnet_v2", "ResNet101V2", RESNET_V2_STAGES),
    ModelSpec("resnet152v2", "resnet_v2", "ResNet152V2", RESNET_V2_STAGES),
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
