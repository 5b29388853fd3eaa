"""Any number of input channels with pretrained weights: the first convolution is adapted as
timm does (C = 1: summed over RGB; C > 3: repeated and scaled by 3 / C), the preprocessing is
the channel-mean of the weights' own, and the model's weights record says so."""

import hashlib
import json

import keras
import numpy as np
import pytest
from PIL import Image

import keras_vggres
from keras_vggres.weights import manifest
from keras_vggres.weights.h5 import save_weights_h5
from tests.support.numerics import randomize_weights, rel_diff

SIZE = 64


@pytest.fixture(scope="module")
def rgb_files(tmp_path_factory):
    """Legacy HDF5 no-top weight files of RGB ResNet18 and VGG11BN."""
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for name, builder in (("resnet18", keras_vggres.ResNet18),
                          ("vgg11_bn", keras_vggres.VGG11BN)):
        model = builder(weights=None, include_top=False)
        randomize_weights(model, seed=11)
        files[name] = folder / f"{name}_notop.h5"
        save_weights_h5(model, files[name])
    return files


def _first_conv(model, name):
    return keras.Model(model.inputs, model.get_layer(name).output)


@pytest.mark.parametrize("name, builder, conv", [("resnet18", "ResNet18", "conv1_conv"),
                                                 ("vgg11_bn", "VGG11BN", "block1_conv1")])
def test_grey_model_equals_rgb_model_on_the_replicated_grey_image(rgb_files, name, builder,
                                                                  conv):
    build = getattr(keras_vggres, builder)
    rgb = build(weights=str(rgb_files[name]), include_top=False, input_shape=(SIZE, SIZE, 3))
    grey = build(weights=str(rgb_files[name]), include_top=False, input_shape=(SIZE, SIZE, 1))
    image = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 1)).astype(np.float32)
    pre = keras_vggres.get_preprocessing(grey)(image)  # the channel-mean preprocessing
    replicated = np.repeat(pre, 3, axis=-1)              # the same on every RGB channel
    ours = _first_conv(grey, conv).predict(pre, verbose=0)
    reference = _first_conv(rgb, conv).predict(replicated, verbose=0)
    assert rel_diff(ours, reference) <= 1e-5
    info = keras_vggres.weights_info(grey)
    assert info.input_channels == 1 and "summed over its RGB input channels" in info.adaptation


def test_channel_mean_preprocessing_numbers():
    grey = keras_vggres.ResNet18(weights=None, include_top=False, input_shape=(SIZE, SIZE, 1))
    x = np.full((1, 2, 2, 1), 100.0, np.float32)
    mean, std = np.mean([0.485, 0.456, 0.406]), np.mean([0.229, 0.224, 0.225])
    np.testing.assert_allclose(keras_vggres.get_preprocessing(grey)(x),
                               (100 / 255 - mean) / std, rtol=1e-6)
    inside = keras_vggres.ResNet18(weights=None, include_top=False, input_shape=(SIZE, SIZE, 1),
                                   include_preprocessing=True)
    caffe = keras_vggres.ResNet50(weights=None, include_top=False, input_shape=(SIZE, SIZE, 4),
                                  include_preprocessing=True)
    assert keras_vggres.get_preprocessing(inside).mode == "raw"
    layer = caffe.get_layer("preprocessing")
    np.testing.assert_allclose(layer.offset, [-np.mean([103.939, 116.779, 123.68])] * 4)


def test_four_channels_repeat_and_scale_the_rgb_kernel(rgb_files):
    rgb = keras_vggres.ResNet18(weights=str(rgb_files["resnet18"]), include_top=False)
    four = keras_vggres.ResNet18(weights=str(rgb_files["resnet18"]), include_top=False,
                                 input_shape=(SIZE, SIZE, 4))
    kernel = rgb.get_layer("conv1_conv").kernel.numpy()
    expected = np.concatenate([kernel, kernel[:, :, :1]], axis=2) * 0.75
    np.testing.assert_allclose(four.get_layer("conv1_conv").kernel.numpy(), expected, rtol=1e-6)
    others = [(a, b) for a, b in zip(rgb.weights, four.weights) if "conv1_conv" not in a.path]
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in others)
    info = keras_vggres.weights_info(four)
    assert info.input_channels == 4 and "scaled by 3/4" in info.adaptation


def test_a_tag_loads_into_one_and_four_channel_models(rgb_files, tmp_path, monkeypatch):
    body = rgb_files["resnet18"].read_bytes()
    name = rgb_files["resnet18"].name
    (tmp_path / name).write_bytes(body)
    doc = {"schema": 1, "models": {"resnet18": {"tags": {"mine": {
        "source": "custom", "format": "keras-h5", "variant": "v1.5",
        "files": {"notop": {"name": name, "url": "https://example.invalid/" + name,
                            "size": len(body), "md5": hashlib.md5(body).hexdigest()}},
        "preprocess": "torch", "transform": {"resize": 256, "crop": 224,
                                             "interpolation": "bilinear"},
        "metrics": {}, "params": None, "gflops": None, "license": "test"}}}}}
    (tmp_path / "extra.json").write_text(json.dumps(doc))
    monkeypatch.setenv("KERAS_VGGRES_MANIFEST", str(tmp_path / "extra.json"))
    monkeypatch.setenv("KERAS_VGGRES_HOME", str(tmp_path))
    manifest.reload_manifest()
    try:
        for channels in (1, 4):
            model = keras_vggres.ResNet18(weights="mine", include_top=False,
                                          input_shape=(SIZE, SIZE, channels))
            info = keras_vggres.weights_info(model)
            assert (info.tag, info.input_channels) == ("mine", channels) and info.adaptation
            assert model.get_layer("conv1_conv").kernel.shape[2] == channels
    finally:
        monkeypatch.delenv("KERAS_VGGRES_MANIFEST")
        manifest.reload_manifest()


def test_native_files_cannot_be_adapted(tmp_path):
    model = keras_vggres.ResNet18(weights=None, include_top=False)
    path = tmp_path / "rgb.weights.h5"
    model.save_weights(path)
    with pytest.raises(ValueError, match="native.*input channels"):
        keras_vggres.ResNet18(weights=str(path), include_top=False, input_shape=(SIZE, SIZE, 1))


def test_grey_models_load_grey_images(tmp_path):
    path = tmp_path / "colour.png"
    pixels = np.random.default_rng(2).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    grey = keras_vggres.ResNet18(weights=None, include_top=False, input_shape=(SIZE, SIZE, 1))
    batch = keras_vggres.load_images([path], model=grey)
    assert batch.shape == (1, SIZE, SIZE, 1)
    expected = keras_vggres.load_images([path], model=grey, channels=3)
    luma = Image.fromarray(pixels).convert("L")
    assert abs(float(batch.mean()) - float(np.asarray(luma, np.float32).mean())) < 2.0
    assert expected.shape == (1, SIZE, SIZE, 3)
