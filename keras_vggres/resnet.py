"""Drop-in for `keras.applications.resnet` (Caffe-mode preprocessing, like Keras)."""

from keras_vggres.imagenet import decode_predictions
from keras_vggres.models.resnet import ResNet50, ResNet101, ResNet152
from keras_vggres.vgg16 import preprocess_input

__all__ = ["ResNet50", "ResNet101", "ResNet152", "preprocess_input", "decode_predictions"]
