"""The one build driver every public builder calls: weights -> checks -> input -> body -> head -> load."""

from __future__ import annotations

from contextlib import nullcontext

import keras

from keras_vggres.models import _common
from keras_vggres.models.features import record_stages
from keras_vggres.models.specs import stage_features, variants
from keras_vggres.weights import pretrained
from keras_vggres.weights.info import attach


def build(model_name, *, body, top, include_top, weights, input_tensor, input_shape, pooling,
          classes, classifier_activation, name, include_preprocessing, variant=None):
    """Build `model_name` with the keras.applications contract and load its weights.

    `body(x, variant)` returns the feature map; `top(x, classes, activation)` the classifier.
    The variants the model accepts come from `specs.variants`. The model carries its stage
    record (`models.feature_info`).
    """
    weights_arg = _common.describe_weights_arg(weights)
    choice = pretrained.resolve(model_name, weights_arg)
    variant = pretrained.pick_variant(model_name, choice, variant, variants(model_name))
    input_shape = _common.check_builder_args(
        include_top=include_top, pretrained=choice.record is not None, input_shape=input_shape,
        input_tensor=input_tensor, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation, weights_given=weights_arg)
    mode = pretrained.preprocessing_mode(model_name, include_preprocessing, choice, variant)

    # Weights about to be loaded replace every kernel: skip the random draw (seconds for VGG).
    will_load = choice.record is not None or choice.path is not None
    with _common.weights_will_load() if will_load else nullcontext():
        inputs, x = _common.model_input(input_tensor, input_shape)
        channels = _common.input_channels(x)
        if mode is not None:
            from keras_vggres.preprocessing import add_preprocessing
            x = add_preprocessing(x, mode, channels=channels)
        body_input = x
        x = body(x, variant)
        x = (top(x, classes, classifier_activation) if include_top
             else _common.pooled_output(x, pooling))
        model = keras.Model(inputs, x, name=name)
        record_stages(model, body_input, stage_features(model_name, variant))
        pretrained.load(model, model_name, choice, include_top=include_top, channels=channels)
    return attach(model, pretrained.describe_weights(
        model_name, choice, variant=variant, preprocess=mode, include_top=include_top,
        classes=classes, channels=channels))
