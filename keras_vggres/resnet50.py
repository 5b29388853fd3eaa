"""Drop-in for `keras.applications.resnet50`: the same objects as `keras_vggres.resnet`."""

from keras_vggres.resnet import ResNet50, decode_predictions, preprocess_input

__all__ = ["ResNet50", "preprocess_input", "decode_predictions"]
