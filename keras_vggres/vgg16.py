"""Drop-in for `keras.applications.vgg16`."""

from keras_vggres.imagenet import decode_predictions, make_preprocess_input
from keras_vggres.models.vgg import VGG16

preprocess_input = make_preprocess_input("caffe")

__all__ = ["VGG16", "preprocess_input", "decode_predictions"]
