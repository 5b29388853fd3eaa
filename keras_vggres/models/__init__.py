"""Model builders: VGG and ResNet families, and the stage record they leave on each model.

Re-exports only, resolved lazily so that `keras_vggres.models.specs` (the architecture tables)
imports without Keras.
"""

import importlib

_EXPORTS = {
    "keras_vggres.models.vgg": (
        "VGG11", "VGG13", "VGG16", "VGG19", "VGG11BN", "VGG13BN", "VGG16BN", "VGG19BN"),
    "keras_vggres.models.resnet": (
        "ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152", "ResNet50V2",
        "ResNet101V2", "ResNet152V2"),
    "keras_vggres.models.features": ("feature_info", "StageInfo"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_vggres.models' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
