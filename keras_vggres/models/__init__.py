"""Model builders: VGG and ResNet families, and the stage record they leave on each model.

Re-exports only, resolved lazily so that `keras_vggres.models.specs` (the architecture tables)
imports without Keras.
"""

from keras_vggres._lazy import lazy_exports

_EXPORTS = {
    "keras_vggres.models.vgg": (
        "VGG11", "VGG13", "VGG16", "VGG19", "VGG11BN", "VGG13BN", "VGG16BN", "VGG19BN"),
    "keras_vggres.models.resnet": (
        "ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152", "ResNet50V2",
        "ResNet101V2", "ResNet152V2"),
    "keras_vggres.models.features": ("feature_info", "StageInfo"),
}
__all__, __getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
