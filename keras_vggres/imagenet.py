"""ImageNet input and output handling, as one import: preprocessing, decoding, image loading.

Re-exports only (the code lives in `preprocessing`, `decoding`, `images`, `transforms` and
`weights.info`), so `from keras_vggres.imagenet import ...` keeps working.
"""

from keras_vggres.decoding import decode_predictions
from keras_vggres.images import load_images
from keras_vggres.preprocessing import (ImageNetPreprocessing, make_preprocess_input,
                                        preprocess_input)
from keras_vggres.transforms import (DEFAULT_SIZE, INTERPOLATIONS, PREPROCESS_MODES,
                                     PreprocessMode, Transform)
from keras_vggres.weights.info import get_preprocessing, transform_for


def eval_transform(weights, model=None):
    """The eval transform (resize, crop, interpolation) of a weights tag, from the manifest."""
    return transform_for(model=model, weights=weights)


__all__ = ["DEFAULT_SIZE", "INTERPOLATIONS", "PREPROCESS_MODES", "ImageNetPreprocessing",
           "PreprocessMode", "Transform", "decode_predictions", "eval_transform",
           "get_preprocessing", "load_images", "make_preprocess_input", "preprocess_input"]
