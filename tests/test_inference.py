"""optimize_for_inference: conv -> BatchNorm folding keeps outputs, removes the BNs it should."""

import keras
import numpy as np
import pytest

import keras_vggres
from keras_vggres.inference import foldable_pairs, folded_weights
from keras_vggres.models import _common
from tests.support.numerics import randomize_weights, rel_diff

TOLERANCE = 1e-5  # relative, float32 outputs compared in float64
SIZE = 64


def _bn_names(model):
    return [layer.name for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)]


def _preact_bns(model):
    """ResNetV2's BatchNorms that precede a conv (or end the network): they cannot be folded."""
    return [name for name in _bn_names(model) if name.endswith("_preact_bn") or name == "post_bn"]


CASES = {  # id: (builder, kwargs, BNs expected to survive folding)
    "resnet50_v1": ("ResNet50", {}, lambda m: []),
    "resnet50_v1.5": ("ResNet50", {"variant": "v1.5"}, lambda m: []),
    "resnet18": ("ResNet18", {}, lambda m: []),
    "vgg11_bn": ("VGG11BN", {}, lambda m: []),
    "resnet50v2": ("ResNet50V2", {}, _preact_bns),
}


def _inputs(batch=2, size=SIZE, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (batch, size, size, 3)).astype("float32")


@pytest.mark.parametrize("case", list(CASES))
def test_folding_keeps_outputs_and_removes_conv_bns(case):
    name, kwargs, surviving = CASES[case]
    model = getattr(keras_vggres, name)(weights=None, include_top=False,
                                        input_shape=(SIZE, SIZE, 3), **kwargs)
    randomize_weights(model, seed=1)
    x = _inputs()
    expected = model(x, training=False)
    before = [w.copy() for w in model.get_weights()]
    bns_before = _bn_names(model)

    optimized = keras_vggres.optimize_for_inference(model)

    assert rel_diff(optimized(x, training=False), expected) <= TOLERANCE
    assert _bn_names(optimized) == surviving(model)
    folded = len(bns_before) - len(surviving(model))
    assert len(optimized.layers) == len(model.layers) - folded
    assert optimized.output_names == model.output_names
    assert optimized.output.shape == model.output.shape
    assert optimized.name == model.name
    # The original is untouched and shares nothing with the copy.
    assert _bn_names(model) == bns_before
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))
    assert not {id(v) for v in model.weights} & {id(v) for v in optimized.weights}
    assert rel_diff(model(x, training=False), expected) == 0.0


@pytest.fixture(scope="module")
def resnet18_top():
    model = keras_vggres.ResNet18(weights=None, input_shape=(SIZE, SIZE, 3), classes=10,
                                  classifier_activation=None)
    randomize_weights(model, seed=2)
    return model


@pytest.mark.parametrize("jit_compile", [True, False, "auto"])
def test_with_top_and_compiled_predict(resnet18_top, jit_compile):
    x = _inputs(batch=3, seed=1)
    expected = resnet18_top.predict(x, verbose=0)

    optimized = keras_vggres.optimize_for_inference(resnet18_top, jit_compile=jit_compile)

    # "auto" is Keras' own rule (XLA off on CPU-only TensorFlow), as for the original model.
    assert optimized.jit_compile is (resnet18_top.jit_compile if jit_compile == "auto"
                                     else jit_compile)
    assert isinstance(optimized, keras_vggres.inference.InferenceModel)
    assert _bn_names(optimized) == []
    assert optimized.output_names == ["predictions"]
    assert rel_diff(optimized.predict(x, verbose=0), expected) <= TOLERANCE
    assert rel_diff(optimized.predict(x, batch_size=2, verbose=0), expected) <= TOLERANCE


def test_lean_predict_matches_keras_predict_and_runs_callbacks(resnet18_top):
    optimized = keras_vggres.optimize_for_inference(resnet18_top)
    x = _inputs(batch=5, seed=7)
    expected = keras.Model.predict(optimized, x, batch_size=2, verbose=0)

    class Count(keras.callbacks.Callback):
        batches = 0

        def on_predict_batch_end(self, batch, logs=None):
            Count.batches += 1

    actual = optimized.predict(x, batch_size=2, verbose=0, callbacks=[Count()])
    np.testing.assert_array_equal(actual, expected)
    assert Count.batches == 3
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(x).batch(2)   # not an array: Keras' own path
    np.testing.assert_array_equal(optimized.predict(dataset, verbose=0), expected)


def test_optimized_model_saves_and_loads(resnet18_top, tmp_path):
    optimized = keras_vggres.optimize_for_inference(resnet18_top)
    path = tmp_path / "optimized.keras"
    optimized.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_vggres.inference.InferenceModel)
    x = _inputs(batch=2, seed=8)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), optimized.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)


def test_folded_weights_formula():
    """kernel * gamma / sqrt(var + eps); bias = beta + (b - mean) * gamma / sqrt(var + eps)."""
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, name="conv")
    bn = keras.layers.BatchNormalization(epsilon=1e-3, name="bn")
    keras.Model(inputs, bn(conv(inputs)))
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(size=(3, 3, 3, 4)), rng.normal(size=4)
    gamma, beta, mean = rng.normal(size=4), rng.normal(size=4), rng.normal(size=4)
    var = rng.uniform(0.5, 2.0, 4)
    conv.set_weights([kernel, bias])
    bn.set_weights([gamma, beta, mean, var])
    factor = gamma / np.sqrt(var + 1e-3)
    new_kernel, new_bias = folded_weights(conv, bn)
    np.testing.assert_allclose(new_kernel, kernel * factor, rtol=1e-6)
    np.testing.assert_allclose(new_bias, beta + (bias - mean) * factor, rtol=1e-5, atol=1e-6)


def _graph_with_unfoldable_pairs():
    inputs = keras.Input((16, 16, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="plain")(inputs)
    a = keras.layers.BatchNormalization(name="plain_bn")(a)             # folded
    b = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="relu_conv")(a)
    b = keras.layers.BatchNormalization(name="after_relu_bn")(b)        # activation in between
    c = keras.layers.Conv2D(4, 1, name="shared_out")(b)
    d = keras.layers.BatchNormalization(name="second_consumer_bn")(c)   # c is also used below
    e = keras.layers.Add(name="add")([c, d])
    f = keras.layers.BatchNormalization(name="no_conv_bn")(e)           # follows an Add
    g = keras.layers.Conv2D(4, 1, name="last")(f)
    out = keras.layers.BatchNormalization(name="output_bn")(g)          # a model output
    return keras.Model(inputs, out)


def test_only_safe_pairs_are_folded():
    model = _graph_with_unfoldable_pairs()
    randomize_weights(model, seed=3)
    assert [bn.name for bn in foldable_pairs(model).values()] == ["plain_bn"]
    optimized = keras_vggres.optimize_for_inference(model, jit_compile=False)
    assert _bn_names(optimized) == ["after_relu_bn", "second_consumer_bn", "no_conv_bn",
                                    "output_bn"]
    assert optimized.get_layer("plain").use_bias
    x = np.random.default_rng(4).normal(size=(2, 16, 16, 3)).astype("float32")
    assert rel_diff(optimized(x), model(x)) <= TOLERANCE


def test_nested_backbone_is_folded():
    backbone = keras_vggres.ResNet18(weights=None, include_top=False,
                                     input_shape=(SIZE, SIZE, 3), pooling="avg")
    randomize_weights(backbone, seed=5)
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(backbone(inputs)))
    x = _inputs(seed=6)

    optimized = keras_vggres.optimize_for_inference(model, jit_compile=False)

    inner = optimized.get_layer(backbone.name)
    assert _bn_names(inner) == []
    assert _bn_names(backbone) != []
    assert rel_diff(optimized(x), model(x)) <= TOLERANCE


@pytest.mark.parametrize("make", [lambda: "resnet50",
                                  lambda: keras.Sequential([keras.layers.Dense(2)])],
                         ids=["string", "sequential"])
def test_rejects_non_functional_models(make):
    with pytest.raises(TypeError, match="model"):
        keras_vggres.optimize_for_inference(make())


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_rejects_bad_jit_compile(bad):
    model = _graph_with_unfoldable_pairs()
    with pytest.raises(TypeError, match="jit_compile"):
        keras_vggres.optimize_for_inference(model, jit_compile=bad)


def test_copies_keep_the_originals_initializers(resnet18_top):
    """Kernels are copied over placeholder zeros during the clone; the configs say Keras' own."""
    optimized = keras_vggres.optimize_for_inference(resnet18_top)
    for layer in optimized.layers:
        if hasattr(layer, "kernel_initializer"):
            original = resnet18_top.get_layer(layer.name).kernel_initializer
            assert type(layer.kernel_initializer) is type(original), layer.name
            assert not isinstance(layer.kernel_initializer, keras.initializers.Zeros)
    assert _common._PLACEHOLDER_KERNELS.get() is None
