"""models/specs.py: Keras-free, derived parameter counts, and the stage record builders leave."""

import os
import subprocess
import sys
import textwrap

import keras
import pytest

import keras_vggres
from keras_vggres import registry
from keras_vggres.models import feature_info, specs

SIZE = 64   # small inputs; parameter counts of ResNets (and of VGG without top) ignore the size


def _run(script):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.parametrize("module", ["keras_vggres.models.specs", "keras_vggres.weights.convert"])
def test_specs_and_converter_import_without_keras(module):
    result = _run(f"""
        import sys
        import {module}
        heavy = sorted({{"keras", "tensorflow", "jax", "torch"}} & set(sys.modules))
        assert not heavy, heavy
    """)
    assert result.returncode == 0, result.stderr[-3000:]


def test_registry_agrees_with_specs():
    assert set(registry.MODELS) == set(specs.MODEL_FAMILIES)
    for name, spec in registry.MODELS.items():
        assert spec.family == specs.family(name)
        assert spec.stages == specs.FAMILY_STAGES[spec.family]


def _variant(name, variant):
    return {"variant": variant} if variant else {}


def _build(name, variant=None, **kwargs):
    keras.backend.clear_session()
    return registry.get_model(name, weights=None, **_variant(name, variant), **kwargs)


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_param_count_equals_count_params(name):
    """Default variant with a 10-class top (no top: see test_feature_info_matches_...); the
    registry's number (1000 classes, 224 px) is test_builders' count_params check."""
    assert registry.MODELS[name].params == specs.param_count(name, include_top=True)
    model = _build(name, include_top=True, classes=10, input_shape=(SIZE, SIZE, 3))
    assert model.count_params() == specs.param_count(name, classes=10, image_size=SIZE)


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "resnet152"])
def test_param_count_of_the_v15_variant(name):
    model = _build(name, "v1.5", include_top=True, input_shape=(SIZE, SIZE, 3))
    assert model.count_params() == specs.param_count(name, "v1.5")
    assert specs.param_count(name, "v1.5") != specs.param_count(name, "v1")   # no conv biases


def test_param_count_of_vgg_at_224_and_bad_arguments():
    model = _build("vgg11", include_top=True, classes=7)
    assert model.count_params() == specs.param_count("vgg11", classes=7)
    with pytest.raises(ValueError, match=r"`model_name` must be one of \('vgg11', .*"
                                         r"received model_name='resnet5'"):
        specs.param_count("resnet5")
    with pytest.raises(ValueError, match=r"`variant` must be one of \(None, 'v2'\).*'v1'"):
        specs.param_count("resnet50v2", "v1")


# ----------------------------------------------------------------------------- feature_info
def _output_shapes(model, info):
    """{stage: (reduction, channels)} measured on the built layers' output shapes."""
    height = model.input_shape[1]
    found = {}
    for stage in info:
        if stage.stage != "head":
            shape = model.get_layer(stage.layer).output.shape
            found[stage.stage] = (height // shape[1], shape[-1])
    return found


@pytest.mark.parametrize("name, variant", [(name, None) for name in registry.MODELS]
                         + [("resnet50", "v1.5")])
def test_feature_info_matches_the_built_layers(name, variant):
    model = _build(name, variant, include_top=False, pooling="avg", input_shape=(SIZE, SIZE, 3),
                   include_preprocessing=True)
    assert model.count_params() == specs.param_count(name, variant, include_top=False)
    info = feature_info(model)
    assert tuple(stage.stage for stage in info) == registry.MODELS[name].stages
    assert _output_shapes(model, info) == {s.stage: (s.reduction, s.channels)
                                           for s in info if s.stage != "head"}
    members = [layer for stage in info for layer in stage.layers]
    assert len(members) == len(set(members))
    assert set(members) == {layer.name for layer in model.layers[1:]} - {"preprocessing"}
    assert all(stage.layer == stage.layers[-1] for stage in info)
    assert (info[-1].layer, info[-1].channels, info[-1].reduction) == ("avg_pool",
                                                                       info[-2].channels, None)


def test_feature_info_of_resnet50_and_vgg16_at_224():
    resnet = keras_vggres.ResNet50(weights=None, include_top=False, input_shape=(224, 224, 3))
    info = {stage.stage: stage for stage in feature_info(resnet)}
    expected = {"stem": (4, 64), "conv2": (4, 256), "conv3": (8, 512), "conv4": (16, 1024),
                "conv5": (32, 2048)}
    assert {s: (info[s].reduction, info[s].channels) for s in expected} == expected
    assert _output_shapes(resnet, feature_info(resnet)) == expected
    assert info["conv4"].layer == "conv4_block6_out" and info["head"].layers == ()
    assert info["head"].layer is None and info["head"].channels is None

    vgg = keras_vggres.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))
    expected = {f"block{b}": (2 ** b, width) for b, width in
                enumerate((64, 128, 256, 512, 512), start=1)}
    assert _output_shapes(vgg, feature_info(vgg)) == expected
    assert feature_info(vgg)[0].layers == ("block1_conv1", "block1_conv2", "block1_pool")


def test_v2_strides_in_the_last_block_of_a_stage():
    model = keras_vggres.ResNet50V2(weights=None, include_top=False, input_shape=(224, 224, 3))
    shapes = _output_shapes(model, feature_info(model))
    assert shapes == {"stem": (4, 64), "conv2": (8, 256), "conv3": (16, 512),
                      "conv4": (32, 1024), "conv5": (32, 2048), "post": (32, 2048)}
    assert model.get_layer("conv2_block3_2_conv").strides == (2, 2)
    assert model.get_layer("conv2_block1_2_conv").strides == (1, 1)


def test_feature_info_with_top_and_of_foreign_or_reloaded_models(tmp_path):
    model = keras_vggres.VGG11(weights=None, input_shape=(32, 32, 3), classes=3)
    head = feature_info(model)[-1]
    assert head == type(head)("head", "predictions", 3, None,
                              ("flatten", "fc1", "fc2", "predictions"))
    model.save(tmp_path / "vgg11.keras")
    assert feature_info(keras.saving.load_model(tmp_path / "vgg11.keras")) is None
    assert feature_info(keras.models.clone_model(model)) is None
    assert feature_info(keras.applications.VGG16(weights=None, include_top=False)) is None
