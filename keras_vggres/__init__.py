"""VGG and ResNet for Keras 3 with verified ImageNet weights (Keras' and torchvision's).

Public API re-exports only. They are resolved lazily, so `import keras_vggres` stays cheap
(no TensorFlow import, no network, no file I/O) until a name is used; it also makes files that
name our Keras objects loadable (`keras_vggres._register`).
"""

import importlib

from keras_vggres import _register

__version__ = "0.1.0"

_EXPORTS = {
    "keras_vggres.models": (
        "VGG11", "VGG13", "VGG16", "VGG19", "VGG11BN", "VGG13BN", "VGG16BN", "VGG19BN",
        "ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152",
        "ResNet50V2", "ResNet101V2", "ResNet152V2"),
    "keras_vggres.preprocessing": ("preprocess_input",),
    "keras_vggres.decoding": ("decode_predictions",),
    "keras_vggres.images": ("load_images",),
    "keras_vggres.weights.info": ("get_preprocessing", "weights_info"),
    "keras_vggres.registry": ("get_model", "list_models"),
    "keras_vggres.weights.manifest": ("list_weights",),
    "keras_vggres.inference": ("optimize_for_inference",),
    "keras_vggres.saving": ("load_model", "save_model"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_WHERE)


_register.install()


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_vggres' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
