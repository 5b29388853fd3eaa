"""Drop-in for `keras.applications.resnet_v2` ("tf" preprocessing: x / 127.5 - 1)."""

from keras_vggres.imagenet import decode_predictions, make_preprocess_input
from keras_vggres.models.resnet import ResNet50V2, ResNet101V2, ResNet152V2

preprocess_input = make_preprocess_input("tf")

__all__ = ["ResNet50V2", "ResNet101V2", "ResNet152V2", "preprocess_input", "decode_predictions"]
