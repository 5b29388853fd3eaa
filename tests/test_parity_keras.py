"""The 8 models keras.applications has: same weight layers, shapes, counts and outputs."""

import keras
import numpy as np
import pytest

import keras_vggres
from tests.support.numerics import copy_weights_by_name, randomize_weights, rel_diff, weight_layers

SHARED = ["VGG16", "VGG19", "ResNet50", "ResNet101", "ResNet152", "ResNet50V2", "ResNet101V2",
          "ResNet152V2"]
# Measured on keras.applications (Keras 3.15): params top, params notop, non-trainable.
KERAS_COUNTS = {
    "VGG16": (138_357_544, 14_714_688, 0), "VGG19": (143_667_240, 20_024_384, 0),
    "ResNet50": (25_636_712, 23_587_712, 53_120), "ResNet101": (44_707_176, 42_658_176, 105_344),
    "ResNet152": (60_419_944, 58_370_944, 151_424),
    "ResNet50V2": (25_613_800, 23_564_800, 45_440),
    "ResNet101V2": (44_675_560, 42_626_560, 97_664),
    "ResNet152V2": (60_380_648, 58_331_648, 143_744),
}
TOLERANCE = 1e-4


def _non_trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)


def _build_pair(name, include_top, input_shape):
    kwargs = dict(weights=None, include_top=include_top, input_shape=input_shape)
    if include_top:
        kwargs["classifier_activation"] = None  # compare logits: far more sensitive than softmax
    reference = getattr(keras.applications, name)(**kwargs)
    ours = getattr(keras_vggres, name)(**kwargs)
    return reference, ours


@pytest.mark.parametrize("include_top", [True, False], ids=["top", "notop"])
@pytest.mark.parametrize("name", SHARED)
def test_same_graph_and_outputs_as_keras(name, include_top):
    input_shape = (224, 224, 3) if include_top else (200, 256, 3)
    reference, ours = _build_pair(name, include_top, input_shape)

    assert weight_layers(ours) == weight_layers(reference)
    assert [w.path for w in ours.weights] == [w.path for w in reference.weights]
    assert ours.count_params() == reference.count_params()
    assert _non_trainable(ours) == _non_trainable(reference)
    assert len(ours.layers) == len(reference.layers)
    assert ours.name == reference.name
    top, notop, frozen = KERAS_COUNTS[name]
    assert ours.count_params() == (top if include_top else notop)
    assert _non_trainable(ours) == frozen

    randomize_weights(reference, seed=1)
    assert copy_weights_by_name(reference, ours) == len(weight_layers(reference))
    x = np.random.default_rng(0).normal(0, 1, (2,) + input_shape).astype("float32")
    expected = reference.predict(x, verbose=0)
    actual = ours.predict(x, verbose=0)
    assert actual.shape == expected.shape
    assert rel_diff(actual, expected) <= TOLERANCE
    print(f"PARITY {name} {'top 224x224' if include_top else 'notop 200x256'} "
          f"max_rel_diff={rel_diff(actual, expected):.2e}")


@pytest.mark.parametrize("name", SHARED)
def test_builder_signature_matches_keras(name):
    import inspect

    ref = inspect.signature(getattr(keras.applications, name)).parameters
    ours = inspect.signature(getattr(keras_vggres, name)).parameters
    for arg, param in ref.items():
        assert arg in ours, f"{name} lacks keras.applications' argument {arg}"
        if arg != "name":
            assert ours[arg].default == param.default, arg
    assert list(ours)[:len(ref)] == list(ref)


def test_pooling_outputs_match_keras():
    for pooling in ("avg", "max"):
        reference = keras.applications.ResNet50(weights=None, include_top=False, pooling=pooling,
                                                input_shape=(64, 64, 3))
        ours = keras_vggres.ResNet50(weights=None, include_top=False, pooling=pooling,
                                     input_shape=(64, 64, 3))
        randomize_weights(reference, seed=2)
        copy_weights_by_name(reference, ours)
        x = np.random.default_rng(1).normal(0, 1, (1, 64, 64, 3)).astype("float32")
        expected = reference.predict(x, verbose=0)
        assert expected.shape == (1, 2048)
        assert rel_diff(ours.predict(x, verbose=0), expected) <= TOLERANCE
