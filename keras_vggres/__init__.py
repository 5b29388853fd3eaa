"""VGG and ResNet for Keras 3 with verified ImageNet weights (Keras' and torchvision's).

Public API re-exports only. They are resolved lazily, so `import keras_vggres` stays cheap
(no TensorFlow import, no network, no file I/O) until a name is used; it also makes files that
name our Keras objects loadable (`keras_vggres._register`).
"""

from keras_vggres import _register
from keras_vggres._lazy import lazy_exports

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
    "keras_vggres.profiling": ("profile",),
    "keras_vggres.exporting": ("export",),
}
_SUBMODULES = ("transfer", "viz", "weights", "models", "distribute")
__all__, __getattr__, __dir__ = lazy_exports(globals(), _EXPORTS, _SUBMODULES)
_register.install()
