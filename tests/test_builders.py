"""Every registered builder: names, counts, the argument contract and its error messages."""

import inspect

import keras
import numpy as np
import pytest

import keras_vggres
from keras_vggres import registry
from keras_vggres.imagenet import preprocess_input
from keras_vggres.weights import manifest
from tests.support.numerics import randomize_weights, rel_diff

# torchvision's published trainable-parameter counts (torchvision_weights.json num_params).
TORCHVISION_TRAINABLE = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808, "vgg11": 132_863_336,
    "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
}


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _variant_kwargs(spec, variant):
    params = inspect.signature(spec.builder).parameters
    return {"variant": variant} if "variant" in params and variant else {}


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_param_counts_match_registry_manifest_and_torchvision(name):
    spec = registry.MODELS[name]
    records = [manifest.get_weights(name, tag) for tag in manifest.list_weights(name)]
    variants = {r.variant for r in records if r.variant in ("v1", "v1.5")} or {None}
    for variant in sorted(variants, key=str):
        model = spec.builder(weights=None, **_variant_kwargs(spec, variant))
        if variant in (None, "v1"):
            assert model.count_params() == spec.params
        for record in records:
            if record.variant not in (variant, None, "v2"):
                continue
            counted = _trainable(model) if record.source == "torchvision" else model.count_params()
            assert record.params == counted, (name, record.tag)
        if name in TORCHVISION_TRAINABLE and variant != "v1":
            assert _trainable(model) == TORCHVISION_TRAINABLE[name]
        keras.backend.clear_session()


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_every_layer_named_and_stages_cover_weights(name):
    spec = registry.MODELS[name]
    model = spec.builder(weights=None, include_top=False, input_shape=(32, 32, 3), pooling="avg")
    names = [layer.name for layer in model.layers[1:]]
    assert len(names) == len(set(names))
    prefixes = {"vgg": ("block",), "resnet": ("conv", "pool"), "resnet_v2": ("conv", "pool", "post")}
    for layer_name in names:
        assert layer_name.startswith(prefixes[spec.family] + ("avg_pool",)), layer_name
    assert model.output_shape == (None, 512 if spec.family == "vgg" else
                                  (512 if name in ("resnet18", "resnet34") else 2048))


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_docstring_mentions_every_parameter(name):
    builder = registry.MODELS[name].builder
    for param in inspect.signature(builder).parameters:
        assert f"{param}:" in builder.__doc__, (name, param)


def test_include_preprocessing_equals_preprocess_then_model():
    plain = keras_vggres.ResNet18(weights=None, include_top=False, input_shape=(48, 48, 3))
    inside = keras_vggres.ResNet18(weights=None, include_top=False, input_shape=(48, 48, 3),
                                   include_preprocessing=True)
    randomize_weights(plain)
    inside.set_weights(plain.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 3)).astype("float32")
    expected = plain.predict(preprocess_input(x, mode="torch"), verbose=0)
    assert rel_diff(inside.predict(x, verbose=0), expected) < 1e-5
    assert inside.get_layer("preprocessing").mode == "torch"


def test_include_preprocessing_follows_family_and_explicit_mode():
    caffe = keras_vggres.VGG16(weights=None, include_top=False, include_preprocessing=True)
    v2 = keras_vggres.ResNet50V2(weights=None, include_top=False, include_preprocessing=True)
    v15 = keras_vggres.ResNet50(weights=None, include_top=False, include_preprocessing=True,
                                variant="v1.5")
    explicit = keras_vggres.VGG16(weights=None, include_top=False, include_preprocessing="tf")
    assert caffe.get_layer("preprocessing").mode == "caffe"
    assert v2.get_layer("preprocessing").mode == "tf"
    assert v15.get_layer("preprocessing").mode == "torch"
    assert explicit.get_layer("preprocessing").mode == "tf"


def test_input_tensor_is_used_and_list_input_shape_accepted():
    tensor = keras.Input((40, 40, 3))
    model = keras_vggres.ResNet18(weights=None, include_top=False, input_tensor=tensor)
    assert model.inputs[0] is tensor
    model = keras_vggres.VGG11(weights=None, include_top=False, input_shape=[64, 64, 3])
    assert model.output_shape == (None, 2, 2, 512)


def test_v15_strides_on_3x3_and_has_no_conv_bias():
    model = keras_vggres.ResNet50(weights=None, variant="v1.5", include_top=False,
                                  input_shape=(64, 64, 3))
    assert model.get_layer("conv3_block1_1_conv").strides == (1, 1)
    assert model.get_layer("conv3_block1_2_conv").strides == (2, 2)
    assert not any(layer.use_bias for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert model.get_layer("conv1_bn").epsilon == 1e-5


def test_get_model_builds_by_name():
    model = keras_vggres.get_model("ResNet18", weights=None, include_top=False,
                                   input_shape=(32, 32, 3))
    assert model.name == "resnet18"
    rows = {row["name"]: row for row in keras_vggres.list_models()}
    assert set(rows) == set(registry.MODELS)
    assert rows["resnet50"]["default_weights"] == "keras"
    assert rows["resnet18"]["default_weights"] == "tv1"


# --------------------------------------------------------------------------- bad input: one rule each
def test_unknown_model_names_close_matches():
    with pytest.raises(ValueError, match=r"resnet5.*resnet50.*Available"):
        keras_vggres.get_model("resnet5")


def test_weights_unknown_string():
    with pytest.raises(ValueError, match=r"`weights`.*imagenet.*tv1.*received weights='nope'"):
        keras_vggres.ResNet18(weights="nope")


def test_weights_wrong_type():
    with pytest.raises(TypeError, match=r"`weights`.*list"):
        keras_vggres.ResNet18(weights=["imagenet"])


def test_pretrained_top_needs_1000_classes():
    with pytest.raises(ValueError, match=r"`classes` should be 1000.*classes=10"):
        keras_vggres.VGG16(weights="imagenet", classes=10)


def test_pretrained_top_needs_default_shape():
    with pytest.raises(ValueError, match=r"`input_shape` should be \(224, 224, 3\).*200"):
        keras_vggres.ResNet50(weights="imagenet", input_shape=(200, 200, 3))


def test_pretrained_accepts_other_channel_counts():
    """C != 3 with pretrained weights adapts the first convolution (tests/test_channels.py);
    offline, the only problem left is the missing file."""
    from keras_vggres.weights.download import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError):
        keras_vggres.ResNet50(weights="imagenet", include_top=False, input_shape=(64, 64, 1))
    with pytest.raises(ValueError, match=r"number of channels.*\(64, 64, 0\)"):
        keras_vggres.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 0))


def test_input_shape_must_have_three_dims():
    with pytest.raises(ValueError, match=r"`input_shape` must be a tuple of three.*\(64, 64\)"):
        keras_vggres.VGG16(weights=None, include_top=False, input_shape=(64, 64))


def test_input_shape_min_size():
    with pytest.raises(ValueError, match=r"at least 32x32.*\(16, 64, 3\)"):
        keras_vggres.VGG16(weights=None, include_top=False, input_shape=(16, 64, 3))


def test_top_needs_static_shape():
    with pytest.raises(ValueError, match=r"static `input_shape`.*None"):
        keras_vggres.ResNet18(weights=None, include_top=True, input_shape=(None, None, 3))


def test_input_tensor_must_be_keras_tensor():
    with pytest.raises(ValueError, match=r"`input_tensor` must be a KerasTensor.*ndarray"):
        keras_vggres.ResNet18(weights=None, input_tensor=np.zeros((1, 64, 64, 3)))


def test_pretrained_activation_restricted():
    with pytest.raises(ValueError, match=r"`classifier_activation`.*'sigmoid'"):
        keras_vggres.VGG16(weights="imagenet", classifier_activation="sigmoid")


def test_unknown_pooling_raises():
    with pytest.raises(ValueError, match=r"`pooling` must be one of \(None, 'avg', 'max'\).*'foo'"):
        keras_vggres.ResNet18(weights=None, include_top=False, pooling="foo")


@pytest.mark.parametrize("classes", [0, -3, 2.5, True])
def test_classes_must_be_positive_int(classes):
    with pytest.raises(ValueError, match=r"`classes` must be an integer >= 1"):
        keras_vggres.ResNet18(weights=None, classes=classes)


def test_unknown_variant():
    with pytest.raises(ValueError, match=r"`variant` must be one of \(None, 'v1', 'v1.5'\).*'v3'"):
        keras_vggres.ResNet50(weights=None, variant="v3")


def test_variant_conflicting_with_tag():
    with pytest.raises(ValueError, match=r"variant.*'v1'.*'tv2'.*'v1.5'"):
        keras_vggres.ResNet50(weights="tv2", variant="v1")


def test_include_top_must_be_bool():
    with pytest.raises(TypeError, match=r"`include_top`.*'yes'"):
        keras_vggres.ResNet18(weights=None, include_top="yes")


def test_include_preprocessing_unknown_mode():
    with pytest.raises(ValueError, match=r"`include_preprocessing`.*'caffee'"):
        keras_vggres.ResNet18(weights=None, include_preprocessing="caffee")


def test_random_weights_with_any_channel_count(recwarn):
    model = keras_vggres.VGG11(weights=None, include_top=False, input_shape=(32, 32, 4))
    assert model.input_shape == (None, 32, 32, 4)
    assert not [w for w in recwarn if "channels" in str(w.message)]
