"""Classifier heads (dtype, activations, argument checks, training mode) and feature taps."""

import keras
import numpy as np
import pytest

from keras_vggres import models
from keras_vggres.transfer import classifier, classifier_head, feature_extractor, freeze, unfreeze


def small_resnet(**kwargs):
    kwargs = {"include_top": False, "weights": None, "input_shape": (32, 32, 3), **kwargs}
    return models.ResNet18(**kwargs)


@pytest.fixture(scope="module")
def resnet18():
    return small_resnet()


@pytest.fixture
def images():
    return np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")


@pytest.fixture
def mixed_bfloat16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


# ----------------------------------------------------------------------------- classifier
def test_softmax_classifier_layers_and_probabilities(resnet18, images):
    model = classifier(resnet18, 5, hidden=16)
    names = [layer.name for layer in model.layers]
    assert names == ["image", "resnet18", "avg_pool", "head_dropout1", "head_dense1",
                     "head_dropout", "logits", "predictions"]
    assert model.name == "resnet18_classifier"
    probs = model.predict_on_batch(images)
    assert probs.shape == (3, 5) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_output_is_float32_under_mixed_precision(mixed_bfloat16, images):
    backbone = small_resnet()
    model = classifier(backbone, 4, pooling="max", dropout=0.0)
    assert model.get_layer("logits").compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"
    probs = model.predict_on_batch(images)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("activation,classes", [("sigmoid", 1), ("sigmoid", 3),
                                                ("linear", 1), (None, 2)])
def test_sigmoid_and_logits(resnet18, images, activation, classes):
    images = images / 255.0                     # keep random-weight logits unsaturated
    model = classifier(resnet18, classes, activation=activation, dropout=0.0)
    out = model.predict_on_batch(images)
    assert out.shape == (3, classes) and out.dtype == np.float32
    logits = keras.Model(model.input, model.get_layer("logits").output).predict_on_batch(images)
    expected = 1 / (1 + np.exp(-logits)) if activation == "sigmoid" else logits
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    if activation == "sigmoid":
        assert np.all((out > 0) & (out < 1))


def test_classifier_head_shares_layers(resnet18, images):
    model = classifier(resnet18, 3, hidden=(8, 6), dropout=0.1)
    head = classifier_head(model)
    assert head.input.shape == (None, 512)
    assert [layer.name for layer in head.layers[1:]] == [
        "head_dropout1", "head_dense1", "head_dropout2", "head_dense2", "head_dropout",
        "logits", "predictions"]
    assert head.get_layer("logits") is model.get_layer("logits")
    features = np.mean(resnet18.predict_on_batch(images), axis=(1, 2))
    np.testing.assert_allclose(head.predict_on_batch(features), model.predict_on_batch(images),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="not a classifier"):
        classifier_head(keras.Sequential([resnet18]))


@pytest.mark.parametrize("pooling", ["avg", None])
def test_pooled_backbone_is_accepted(images, pooling):
    backbone = small_resnet(pooling="avg")
    model = classifier(backbone, 2, pooling=pooling)
    assert "avg_pool" not in [layer.name for layer in model.layers]   # no second pooling
    np.testing.assert_allclose(model.predict_on_batch(images).sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="already pools its output with 'avg'.*pooling='max'"):
        classifier(backbone, 2, pooling="max")


def test_bad_arguments(resnet18):
    cases = [
        (dict(num_classes=0), r"`num_classes` must be an integer >= 2"),
        (dict(num_classes=1), r"`num_classes` must be an integer >= 2 with activation='softmax'"),
        (dict(num_classes=0, activation="sigmoid"), r"`num_classes` must be an integer >= 1"),
        (dict(num_classes=2.0), "num_classes"),
        (dict(num_classes=3, activation="relu"), r"`activation` must be one of \('softmax'"),
        (dict(num_classes=3, pooling="sum"), r"`pooling` must be one of \(None, 'avg', 'max'\)"),
        (dict(num_classes=3, pooling=None),
         r"4D feature map; `pooling` must be one of \('avg', 'max'\)"),
        (dict(num_classes=3, dropout=1.0), r"`dropout` must be a rate in \[0, 1\)"),
        (dict(num_classes=3, hidden=0), "`hidden` must be None"),
        (dict(num_classes=3, hidden=[8, "x"]), "hidden"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            classifier(resnet18, **kwargs)


def test_backbone_with_a_top_is_rejected():
    with_top = models.ResNet18(weights=None, input_shape=(32, 32, 3), classes=3)
    with pytest.raises(ValueError, match=r"classifier top.*predictions.*include_top=False"):
        classifier(with_top, 3)


def test_bn_training_mode_follows_the_freeze_policy(images):
    """Frozen backbone: BN never moves in training mode; after unfreeze(bn="train") it does,
    without rebuilding (Keras 3 overrides the stored training=False, keras-team/keras#20285)."""
    backbone = small_resnet()
    freeze(backbone, up_to="head")
    model = classifier(backbone, 2)
    backbone_config = model.get_config()["layers"][1]
    assert backbone_config["inbound_nodes"][0]["kwargs"]["training"] is False
    bn = backbone.get_layer("conv5_block2_2_bn")
    before = bn.moving_mean.numpy()
    model(images, training=True)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)
    unfreeze(backbone, ["conv5"])                   # bn="frozen": still put
    model(images, training=True)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)
    unfreeze(backbone, ["conv5"], bn="train")
    model(images, training=True)
    assert not np.array_equal(bn.moving_mean.numpy(), before)


def test_resnet50_stage_shapes_at_224():
    backbone = models.ResNet50(include_top=False, weights=None, input_shape=(224, 224, 3))
    extractor = feature_extractor(backbone, stages=["stem", "conv2", "conv3", "conv4", "conv5"])
    features = extractor(np.zeros((1, 224, 224, 3), "float32"))
    shapes = {name: tuple(value.shape[1:]) for name, value in features.items()}
    assert shapes == {"stem": (56, 56, 64), "conv2": (56, 56, 256), "conv3": (28, 28, 512),
                      "conv4": (14, 14, 1024), "conv5": (7, 7, 2048)}


def test_vgg16_blocks_and_relu_tap_at_224():
    model = models.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3))
    blocks = [f"block{b}" for b in range(1, 6)]
    extractor = feature_extractor(model, stages=blocks, layers=["block4_conv3"])
    x = np.random.default_rng(1).uniform(0, 255, (1, 224, 224, 3)).astype("float32")
    features = extractor.predict_on_batch(x)
    shapes = {name: features[name].shape[1:] for name in blocks}
    assert shapes == {"block1": (112, 112, 64), "block2": (56, 56, 128), "block3": (28, 28, 256),
                      "block4": (14, 14, 512), "block5": (7, 7, 512)}   # post-pool
    reference = keras.Model(model.input, model.get_layer("block4_conv3").output)
    np.testing.assert_allclose(features["block4_conv3"], reference.predict_on_batch(x),
                               rtol=1e-5, atol=1e-4)
    relu = features["block4_conv3"]
    assert relu.shape == (1, 28, 28, 512) and relu.min() >= 0


def test_stage_outputs_are_the_last_layers():
    v2 = models.ResNet50V2(include_top=False, weights=None, input_shape=(64, 64, 3))
    extractor = feature_extractor(v2, stages=["conv2", "conv4", "conv5", "post"])
    producers = {name: tensor._keras_history.operation.name
                 for name, tensor in extractor.output.items()}
    assert producers == {"conv2": "conv2_block3_out", "conv4": "conv4_block6_out",
                         "conv5": "conv5_block3_out", "post": "post_relu"}
    shapes = {name: tuple(t.shape[1:3]) for name, t in extractor.output.items()}
    assert shapes == {"conv2": (8, 8), "conv4": (2, 2), "conv5": (2, 2), "post": (2, 2)}


def test_default_taps_nested_model_and_vgg_bn_relu():
    vgg = models.VGG11BN(include_top=False, weights=None, input_shape=(32, 32, 3))
    wrapped = keras.Sequential([vgg, keras.layers.Flatten(), keras.layers.Dense(2)])
    extractor = feature_extractor(wrapped)
    assert sorted(extractor.output) == ["block3", "block4", "block5"]
    taps = feature_extractor(vgg, layers=["block4_relu2", "block2_conv1"])
    assert sorted(taps.output) == ["block2_conv1", "block4_relu2"]
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    assert taps.predict_on_batch(x)["block4_relu2"].min() >= 0
    resnet = feature_extractor(small_resnet())
    assert sorted(resnet.output) == ["conv3", "conv4", "conv5"]


def test_unknown_feature_names_list_valid_ones(resnet18):
    with pytest.raises(ValueError, match=r"`stages` must be one of \('stem', 'conv2', 'conv3', "
                                         r"'conv4', 'conv5'\); received stages='block3'"):
        feature_extractor(resnet18, stages=["block3"])
    with pytest.raises(ValueError, match=r"'conv4_block2_ot'.*Did you mean.*conv4_block2_out.*"
                                         r"Valid names: \[.*'conv1_conv'"):
        feature_extractor(resnet18, layers=["conv4_block2_ot"])
    with pytest.raises(ValueError, match="select no feature"):
        feature_extractor(resnet18, stages=[])
