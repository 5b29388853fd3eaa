"""VGG and ResNet for Keras 3 with verified ImageNet weights (Keras' and torchvision's).

Public API re-exports only; importing this package does no network or file I/O.
"""

from keras_vggres.imagenet import decode_predictions, load_images, preprocess_input
from keras_vggres.models import (VGG11, VGG11BN, VGG13, VGG13BN, VGG16, VGG16BN, VGG19, VGG19BN,
                                 ResNet18, ResNet34, ResNet50, ResNet50V2, ResNet101, ResNet101V2,
                                 ResNet152, ResNet152V2)
from keras_vggres.registry import get_model, list_models
from keras_vggres.weights.manifest import list_weights

__version__ = "0.1.0"

__all__ = [
    "VGG11", "VGG13", "VGG16", "VGG19", "VGG11BN", "VGG13BN", "VGG16BN", "VGG19BN",
    "ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152",
    "ResNet50V2", "ResNet101V2", "ResNet152V2",
    "preprocess_input", "decode_predictions", "load_images",
    "get_model", "list_models", "list_weights",
]
