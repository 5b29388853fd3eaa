"""Drop-in for `keras.applications.vgg19`."""

from keras_vggres.imagenet import decode_predictions
from keras_vggres.models.vgg import VGG19
from keras_vggres.vgg16 import preprocess_input

__all__ = ["VGG19", "preprocess_input", "decode_predictions"]
