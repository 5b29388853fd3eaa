"""Builds that load weights skip the random draw, load in place, and leave no trace of it."""

import keras
import numpy as np
import pytest

import keras_vggres
from keras_vggres.models import _common
from keras_vggres.weights import assign, h5

SHAPE = (32, 32, 3)


def _saved(tmp_path, builder=keras_vggres.VGG11, name="w.h5", **kwargs):
    source = builder(weights=None, include_top=False, input_shape=SHAPE, **kwargs)
    path = tmp_path / name
    h5.save_weights_h5(source, path)
    return source, path


def _kernels(model):
    return {layer.name: layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")}


def test_loaded_model_matches_file_and_keeps_keras_initializers(tmp_path):
    source, path = _saved(tmp_path)
    loaded = keras_vggres.VGG11(weights=path, include_top=False, input_shape=SHAPE)
    for expected, actual in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(actual, expected)
    # The placeholder initializer is gone: same config as a weights=None build, so a clone
    # gets Keras' random (glorot) kernels, not zeros.
    assert [layer.get_config() for layer in loaded.layers[1:]] == \
        [layer.get_config() for layer in source.layers[1:]]   # [0]: Input, auto-named
    assert all(np.any(k != 0) for k in _kernels(keras.models.clone_model(loaded)).values())


def test_failed_load_raises_and_later_builds_are_random(tmp_path):
    _, path = _saved(tmp_path, builder=keras_vggres.VGG13)
    with pytest.raises(ValueError, match="Nothing was loaded"):
        keras_vggres.VGG11(weights=path, include_top=False, input_shape=SHAPE)
    assert _common._PLACEHOLDER_KERNELS.get() is None
    model = keras_vggres.VGG11(weights=None, include_top=False, input_shape=SHAPE)
    kernel = model.get_layer("block3_conv1").kernel.numpy()   # glorot uniform: (3, 3, 128, 256)
    limit = np.sqrt(6 / (9 * 128 + 9 * 256))
    assert np.abs(kernel).max() <= np.float32(limit)   # the bound as float32 kernels hold it
    assert abs(kernel.std() / (limit / np.sqrt(3)) - 1) < 0.05


def test_kernels_are_placeholders_only_inside_the_context():
    with _common.weights_will_load():
        inside = _common.conv2d(4, 3, name="c")
        assert isinstance(inside.kernel_initializer, keras.initializers.Zeros)
    assert isinstance(inside.kernel_initializer, keras.initializers.GlorotUniform)
    assert isinstance(_common.dense(4).kernel_initializer, keras.initializers.GlorotUniform)


@pytest.mark.parametrize("whole_read", [0, 1 << 30], ids=["sliced_read", "whole_read"])
def test_large_weights_are_assigned_in_place_slice_by_slice(tmp_path, monkeypatch, whole_read):
    """With tiny limits every kernel takes the in-place path; the result is exact either way."""
    source, path = _saved(tmp_path, builder=keras_vggres.ResNet18)
    monkeypatch.setattr(assign, "ASSIGN_SLICE_BYTES", 1000)
    monkeypatch.setattr(assign, "WHOLE_READ_BYTES", whole_read)
    loaded = keras_vggres.ResNet18(weights=path, include_top=False, input_shape=SHAPE)
    for expected, actual in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(actual, expected)
