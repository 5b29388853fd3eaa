"""Tests for keras_vggres.imagenet: preprocessing modes, the layer, decoding, image loading."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras
from keras_vggres import imagenet
from keras_vggres.imagenet import (ImageNetPreprocessing, decode_predictions, load_images,
                                   make_preprocess_input, preprocess_input)

PIXEL = (10.0, 20.0, 30.0)
TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EXPECTED = {
    "caffe": (-73.939, -96.779, -113.68),  # BGR order
    "tf": (-0.92157, -0.84314, -0.76471),
    "torch": tuple((v / 255.0 - m) / s for v, m, s in zip(PIXEL, TORCH_MEAN, TORCH_STD)),
}


def _batch(seed=0, shape=(2, 5, 4, 3), dtype=np.float32):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(dtype)


# ----------------------------------------------------------------------------- preprocess_input


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_known_pixel_values(mode):
    x = np.array([[PIXEL]], dtype=np.float32)
    np.testing.assert_allclose(preprocess_input(x, mode=mode)[0, 0], EXPECTED[mode], atol=1e-4)


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_matches_keras_applications(mode):
    x = _batch()
    ours = preprocess_input(x, data_format="channels_last", mode=mode)
    ref = keras.applications.imagenet_utils.preprocess_input(x.copy(), "channels_last", mode)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_input_array_is_not_modified_and_dtype_kept(dtype, mode):
    x = _batch(dtype=dtype)
    before = x.copy()
    out = preprocess_input(x, mode=mode)
    np.testing.assert_array_equal(x, before)
    assert out.dtype == dtype
    assert not np.shares_memory(out, x)


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_uint8_numpy_and_tensor_do_not_wrap(mode):
    x8 = np.array([[[10, 20, 30], [250, 5, 128]]], dtype=np.uint8)
    expected = preprocess_input(x8.astype(np.float32), mode=mode)
    from_numpy = preprocess_input(x8, mode=mode)
    from_tensor = preprocess_input(tf.constant(x8), mode=mode)
    assert from_numpy.dtype == np.float32
    np.testing.assert_allclose(from_numpy, expected, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(from_tensor), expected, rtol=1e-6)


def test_int_list_input_is_accepted():
    out = preprocess_input([[[10, 20, 30]]], mode="caffe")
    np.testing.assert_allclose(out[0, 0], EXPECTED["caffe"], atol=1e-4)


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
@pytest.mark.parametrize("ndim", [3, 4])
def test_channels_first_matches_channels_last(mode, ndim):
    x = _batch(shape=(2, 4, 5, 3))
    if ndim == 3:
        x = x[0]
    last = preprocess_input(x, data_format="channels_last", mode=mode)
    first = preprocess_input(np.moveaxis(x, -1, -3), data_format="channels_first", mode=mode)
    np.testing.assert_allclose(np.moveaxis(first, -3, -1), last, rtol=1e-6)


def test_channels_first_tensor_input():
    x = _batch(shape=(2, 4, 5, 3))
    expected = preprocess_input(x, data_format="channels_last", mode="caffe")
    out = preprocess_input(tf.constant(np.moveaxis(x, -1, 1)), data_format="channels_first")
    np.testing.assert_allclose(np.moveaxis(keras.ops.convert_to_numpy(out), 1, -1), expected,
                               rtol=1e-6)


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_symbolic_tensor_inside_functional_model(mode):
    inputs = keras.Input((5, 4, 3))
    model = keras.Model(inputs, preprocess_input(inputs, mode=mode))
    x = _batch()
    np.testing.assert_allclose(model.predict(x, verbose=0), preprocess_input(x, mode=mode),
                               rtol=1e-5, atol=1e-5)


def test_make_preprocess_input_presets_mode():
    fn = make_preprocess_input("tf")
    assert fn.__name__ == "preprocess_input"
    assert "'tf'" in fn.__doc__ and "data_format" in fn.__doc__
    x = _batch()
    np.testing.assert_array_equal(fn(x), preprocess_input(x, mode="tf"))


def test_bad_mode_error_lists_accepted_values():
    with pytest.raises(ValueError, match=r"`mode` must be one of .*'caffe'.*'tf'.*'torch'.*'foo'"):
        preprocess_input(_batch(), mode="foo")
    with pytest.raises(ValueError, match="mode"):
        make_preprocess_input("Caffe")
    with pytest.raises(ValueError, match="mode"):
        ImageNetPreprocessing(mode="bgr")


def test_bad_data_format_error_lists_accepted_values():
    with pytest.raises(ValueError, match=r"`data_format` must be one of .*channels_first.*'nhwc'"):
        preprocess_input(_batch(), data_format="nhwc")


def test_wrong_channel_count_is_rejected():
    with pytest.raises(ValueError, match=r"3 colour channels.*\(2, 4, 4, 1\)"):
        preprocess_input(np.zeros((2, 4, 4, 1), np.float32))


def test_channels_first_needs_3d_or_4d():
    with pytest.raises(ValueError, match="channels_first.*5 dimensions"):
        preprocess_input(np.zeros((1, 1, 3, 4, 4), np.float32), data_format="channels_first")


# ----------------------------------------------------------------------------- layer


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_layer_in_model_equals_function(mode):
    inputs = keras.Input((5, 4, 3))
    model = keras.Model(inputs, ImageNetPreprocessing(mode)(inputs))
    x = _batch()
    out = model.predict(x, verbose=0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, preprocess_input(x, mode=mode), rtol=1e-5, atol=1e-5)


def test_layer_casts_uint8_input():
    layer = ImageNetPreprocessing("caffe")
    out = keras.ops.convert_to_numpy(layer(np.array([[[[10, 20, 30]]]], dtype=np.uint8)))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0, 0], EXPECTED["caffe"], atol=1e-4)


def test_layer_channels_first():
    x = _batch()
    layer = ImageNetPreprocessing("torch", data_format="channels_first")
    out = keras.ops.convert_to_numpy(layer(np.moveaxis(x, -1, 1)))
    np.testing.assert_allclose(np.moveaxis(out, 1, -1), preprocess_input(x, mode="torch"),
                               rtol=1e-5, atol=1e-6)


def test_layer_config_and_keras_file_round_trip(tmp_path):
    layer = ImageNetPreprocessing("tf", data_format="channels_last", name="pre")
    config = layer.get_config()
    assert config["mode"] == "tf" and config["data_format"] == "channels_last"
    inputs = keras.Input((5, 4, 3))
    model = keras.Model(inputs, layer(inputs))
    path = tmp_path / "pre.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored.get_layer("pre"), ImageNetPreprocessing)
    assert restored.get_layer("pre").mode == "tf"
    x = _batch()
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0))


# ----------------------------------------------------------------------------- decode_predictions


def test_decode_first_and_last_class():
    preds = np.zeros((2, 1000), np.float32)
    preds[0, 0] = 1.0
    preds[1, 999] = 1.0
    decoded = decode_predictions(preds, top=1)
    assert decoded[0][0][:2] == ("n01440764", "tench")
    assert decoded[1][0][:2] == ("n15075141", "toilet_tissue")


def test_decode_order_top_and_scores():
    preds = np.random.default_rng(3).random((3, 1000)).astype(np.float32)
    decoded = decode_predictions(preds, top=4)
    assert len(decoded) == 3 and all(len(row) == 4 for row in decoded)
    for row, pred in zip(decoded, preds):
        best = np.argsort(pred)[::-1][:4]
        assert [item[2] for item in row] == list(pred[best])
        assert all(len(item) == 3 and item[0].startswith("n") for item in row)
    assert len(decode_predictions(preds, top=5000)[0]) == 1000


def test_decode_matches_keras_format_for_tensors():
    preds = tf.constant(np.random.default_rng(4).random((1, 1000)).astype(np.float32))
    (row,) = decode_predictions(preds, top=3)
    assert isinstance(row, list) and isinstance(row[0], tuple)
    assert row[0][2] == pytest.approx(float(np.max(preds.numpy())))


@pytest.mark.parametrize("shape", [(1000,), (2, 10), (1, 1, 1000)])
def test_decode_wrong_shape_error(shape):
    with pytest.raises(ValueError, match=r"2D array of shape \(samples, 1000\).*Received array"):
        decode_predictions(np.zeros(shape, np.float32))


@pytest.mark.parametrize("top", [0, -1, 2.5, True, "5"])
def test_decode_bad_top_error(top):
    with pytest.raises(ValueError, match=r"`top` must be an integer >= 1"):
        decode_predictions(np.zeros((1, 1000), np.float32), top=top)


# ----------------------------------------------------------------------------- load_images


@pytest.fixture
def image_files(tmp_path):
    """Small images in every Pillow mode load_images converts, with known colours."""
    files = {}

    def save(name, img, **kwargs):
        files[name] = tmp_path / name
        img.save(files[name], **kwargs)

    save("rgb.png", Image.new("RGB", (40, 30), (10, 20, 30)))
    save("gray.png", Image.new("L", (30, 40), 77))
    save("la.png", Image.new("LA", (32, 32), (0, 0)))  # fully transparent black
    save("rgba.png", Image.new("RGBA", (32, 32), (200, 0, 0, 255)))
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    save("pal_transparent.png", pal, transparency=1)  # index 1 (green) is transparent
    pal2 = Image.new("P", (32, 32), 1)
    pal2.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    save("pal.png", pal2)
    save("cmyk.jpg", Image.new("CMYK", (32, 32), (0, 0, 0, 0)), quality=100)
    save("deep.png", Image.fromarray(np.full((32, 48), 65535, np.uint16)))
    half = np.zeros((32, 32), np.uint16)
    half[:, 16:] = 32768
    save("deep_half.png", Image.fromarray(half))
    save("bw.png", Image.new("1", (32, 32), 1))
    files["not_image.png"] = tmp_path / "not_image.png"
    files["not_image.png"].write_text("this is not an image")
    return files


def test_load_rgb_shape_dtype_and_colour(image_files):
    batch = load_images(image_files["rgb.png"], size=16)
    assert batch.shape == (1, 16, 16, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0, 5, 5], (10, 20, 30))


@pytest.mark.parametrize("name, colour", [
    ("gray.png", (77, 77, 77)),
    ("la.png", (255, 255, 255)),           # transparent -> white background
    ("rgba.png", (200, 0, 0)),             # opaque -> unchanged
    ("pal_transparent.png", (255, 255, 255)),
    ("pal.png", (0, 255, 0)),
    ("cmyk.jpg", (255, 255, 255)),         # no ink -> white
    ("deep.png", (255, 255, 255)),         # 65535 -> 255 (scaled, not clipped)
    ("bw.png", (255, 255, 255)),
])
def test_modes_convert_to_expected_rgb(image_files, name, colour):
    batch = load_images([str(image_files[name])], size=8, resize=10)
    assert batch.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(batch[0, 4, 4], colour, atol=1.0)
    assert 0.0 <= batch.min() and batch.max() <= 255.0


def test_16bit_is_scaled_linearly_not_clipped(image_files):
    batch = load_images(image_files["deep_half.png"], size=32, interpolation="nearest")
    np.testing.assert_allclose(batch[0, 0, 0], (0, 0, 0))
    np.testing.assert_allclose(batch[0, 0, 31], [32768 * 255 / 65535] * 3, rtol=1e-5)


def test_several_files_resize_and_rectangular_crop(image_files):
    paths = [image_files["rgb.png"], image_files["gray.png"]]
    batch = load_images(paths, size=(20, 24), resize=30)
    assert batch.shape == (2, 20, 24, 3)
    np.testing.assert_array_equal(batch[1, 0, 0], (77, 77, 77))


def test_shorter_side_resize_then_center_crop(tmp_path):
    # 60x30 (w x h) image: left half black, right half white; resize shorter side 30 -> 10
    # gives 20x10, the centred 10x10 crop spans the boundary at its middle.
    img = np.zeros((30, 60, 3), np.uint8)
    img[:, 30:] = 255
    Image.fromarray(img).save(tmp_path / "split.png")
    batch = load_images(tmp_path / "split.png", size=10, interpolation="nearest")
    np.testing.assert_array_equal(batch[0, :, :5], 0)
    np.testing.assert_array_equal(batch[0, :, 5:], 255)


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)  # landscape: red left half, blue right half
    img[:, :20] = (255, 0, 0)
    img[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(img).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    batch = load_images(tmp_path / "rot.jpg", size=(40, 20), resize=20,
                        interpolation="nearest")
    assert batch.shape == (1, 40, 20, 3)  # now portrait
    np.testing.assert_allclose(batch[0, 5, 10], (255, 0, 0), atol=8)   # red on top
    np.testing.assert_allclose(batch[0, 35, 10], (0, 0, 255), atol=8)  # blue at the bottom


def test_missing_file_error(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_images([missing])


def test_not_an_image_error(image_files):
    with pytest.raises(ValueError, match=r"not_image\.png.*not an image"):
        load_images(image_files["not_image.png"])


def test_bad_interpolation_error_lists_accepted(image_files):
    with pytest.raises(ValueError, match=r"`interpolation` must be one of .*'bilinear'.*'cubic'"):
        load_images(image_files["rgb.png"], interpolation="cubic")


@pytest.mark.parametrize("kwargs, word", [
    ({"size": 0}, "size"), ({"size": (8, 8, 3)}, "size"), ({"size": 8.0}, "size"),
    ({"resize": (10, 10)}, "resize"), ({"resize": -1}, "resize"),
])
def test_bad_size_arguments(image_files, kwargs, word):
    with pytest.raises(ValueError, match=f"`{word}` must be a positive int"):
        load_images(image_files["rgb.png"], **kwargs)


def test_resize_smaller_than_crop_error(image_files):
    with pytest.raises(ValueError, match=r"rgb\.png.*smaller than the crop size"):
        load_images(image_files["rgb.png"], size=20, resize=10)


@pytest.mark.parametrize("paths", [[], None, [1, 2]])
def test_bad_paths_argument(paths):
    with pytest.raises(ValueError, match="`paths` must be"):
        load_images(paths)


def test_unsupported_mode_error(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float\.tif.*mode 'F'.*supported modes"):
        load_images(tmp_path / "float.tif", size=4)


def test_interpolation_table_has_pillow_filters():
    for name in imagenet.INTERPOLATIONS:
        assert hasattr(Image.Resampling, name.upper())
