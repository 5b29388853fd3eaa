"""Pooled embeddings from arrays, image files and tf.data, and the on-disk cache."""

import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_vggres import images as images_module
from keras_vggres import models
from keras_vggres.transfer import embed, embed_dataset, feature_extractor, freeze
from keras_vggres.transfer import embeddings as embeddings_module

SIZE = 32


def build(mode="torch", size=SIZE, **kwargs):
    return models.ResNet18(include_top=False, weights=None, input_shape=(size, size, 3),
                           include_preprocessing=mode, **kwargs)


@pytest.fixture(scope="module")
def model():
    return build()


@pytest.fixture
def images():
    return np.random.default_rng(0).uniform(0, 255, (5, SIZE, SIZE, 3)).astype("float32")


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i, (h, w) in enumerate([(40, 48), (32, 32), (50, 36), (33, 64), (45, 45)]):
        path = tmp_path / "images" / f"img{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture
def count_runs(monkeypatch):
    """Count forward passes over a whole input (calls of `embeddings._compute`)."""
    calls = []
    real = embeddings_module._compute

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(embeddings_module, "_compute", counting)
    return calls


def manual(model, x, pooling="avg"):
    maps = model.predict_on_batch(x)
    return maps.mean(axis=(1, 2)) if pooling == "avg" else maps.max(axis=(1, 2))


# ----------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_array_matches_a_manual_pooled_forward_pass(model, images, pooling):
    result = embed(model, images, batch_size=2, pooling=pooling, verbose=0)
    assert result.shape == (5, 512) and result.dtype == np.float32
    np.testing.assert_allclose(result, manual(model, images, pooling), rtol=1e-5, atol=1e-5)


def test_last_partial_batch_is_padded_to_one_traced_shape(model, images, monkeypatch):
    """5 images by 2: three calls of shape (2, ...), so the predict function is traced once."""
    shapes = []
    real = keras.Model.predict_on_batch

    def spy(self, x):
        shapes.append(x.shape)
        return real(self, x)

    monkeypatch.setattr(keras.Model, "predict_on_batch", spy)
    result = embed(model, images, batch_size=2, verbose=0)
    assert shapes == [(2, SIZE, SIZE, 3)] * 3
    assert result.shape == (5, 512)
    np.testing.assert_allclose(result, manual(model, images), rtol=1e-5, atol=1e-5)
    shapes.clear()
    embed(model, images[:1], batch_size=2, verbose=0)      # one small batch: nothing to pad
    assert shapes == [(1, SIZE, SIZE, 3)]


def test_pooled_model_is_used_as_it_is(model, images):
    pooled = build(pooling="max")
    pooled.set_weights(model.get_weights())
    for pooling in ("max", None):
        np.testing.assert_allclose(embed(pooled, images, pooling=pooling, verbose=0),
                                   manual(model, images, "max"), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="already pools its output with 'max'"):
        embed(pooled, images, verbose=0)


def test_files_are_loaded_batch_by_batch(model, image_files, monkeypatch):
    loaded = []
    real = images_module.load_images

    def spy(paths, **kwargs):
        loaded.append(len(paths))
        return real(paths, **kwargs)

    monkeypatch.setattr(images_module, "load_images", spy)
    result = embed(model, image_files, batch_size=2, verbose=0)
    assert loaded == [2, 2, 1]                            # streamed, never all at once
    expected = embed(model, real(image_files, model=model), verbose=0)  # the weights' transform
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"`image_size`=48 does not match the input size"):
        embed(model, image_files, image_size=48, verbose=0)
    dynamic = build(size=None)
    dynamic.set_weights(model.get_weights())
    np.testing.assert_allclose(embed(dynamic, image_files, image_size=SIZE, verbose=0), result,
                               rtol=1e-5, atol=1e-5)
    bigger = embed(dynamic, image_files, image_size=(48, 40), verbose=0)
    assert bigger.shape == (5, 512) and not np.allclose(bigger, result)


def test_datasets_with_and_without_labels(model, images):
    labels = np.arange(5) % 2
    expected = manual(model, images)
    unbatched = tf.data.Dataset.from_tensor_slices((images, labels))
    features, got_labels = embed_dataset(model, unbatched, batch_size=2, verbose=0)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got_labels, labels)
    batched = tf.data.Dataset.from_tensor_slices((images.astype("uint8"), labels)).batch(3)
    features, got_labels = embed(model, batched, return_labels=True, verbose=0)
    np.testing.assert_allclose(features, manual(model, images.astype("uint8").astype("float32")),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got_labels, labels)
    only_images = tf.data.Dataset.from_tensor_slices(images).batch(2)
    np.testing.assert_allclose(embed(model, only_images, verbose=0), expected, rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="return_labels=True"):
        embed(model, only_images, return_labels=True, verbose=0)
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        embed_dataset(model, images)


def test_output_is_float32_under_mixed_precision(images):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        result = embed(build(), images, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert result.dtype == np.float32 and result.shape == (5, 512)


def test_progress_bar(model, images, capsys):
    embed(model, images, batch_size=5, verbose=1)
    assert "5/5" in capsys.readouterr().out
    embed(model, images, verbose=0)
    assert capsys.readouterr().out == ""


def test_bad_inputs(model, images):
    with_top = models.ResNet18(weights=None, input_shape=(SIZE, SIZE, 3), classes=2)
    cases = [
        (lambda: embed(with_top, images), ValueError, r"classifier top.*include_top=False"),
        (lambda: embed(feature_extractor(model), images), ValueError, "one output"),
        (lambda: embed(model, images, pooling=None), ValueError,
         r"`pooling` must be one of \('avg', 'max'\); received pooling=None"),
        (lambda: embed(model, images, pooling="mean"), ValueError, "`pooling` must be one of"),
        (lambda: embed(model, images, batch_size=0), ValueError, "`batch_size`"),
        (lambda: embed(model, images, verbose="yes"), ValueError, "`verbose`"),
        (lambda: embed(model, images[0]), ValueError, r"\(N, height, width, channels\)"),
        (lambda: embed(model, images, image_size=SIZE), ValueError, "file paths only"),
        (lambda: embed(model, []), TypeError, "images_or_dataset"),
        (lambda: embed(model, "cat.jpg"), TypeError, "list of image file paths"),
        (lambda: embed(model, ["missing.png"], cache_dir="c"), FileNotFoundError, "missing"),
        (lambda: embed("resnet18", images), TypeError, "keras.Model"),
    ]
    for call, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            call()


# ----------------------------------------------------------------------------- the cache
def test_cache_hit_skips_the_model(model, images, tmp_path, count_runs):
    cache = tmp_path / "cache"
    first = embed(model, images, cache_dir=cache, cache_key="train", verbose=0)
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].startswith("train-resnet18-") and files[0].endswith(".npz")
    second = embed(model, images, cache_dir=cache, cache_key="train", verbose=0)
    assert len(count_runs) == 1
    np.testing.assert_array_equal(first, second)
    freeze(model, up_to="conv5")                          # trainable flags are not in the key
    embed(model, images, cache_dir=cache, cache_key="train", verbose=0)
    assert len(count_runs) == 1
    changed = images.copy()
    changed[0, 0, 0, 0] += 1
    embed(model, changed, cache_dir=cache, cache_key="train", verbose=0)
    embed(model, images, cache_dir=cache, cache_key="val", verbose=0)
    assert len(count_runs) == 3 and len(os.listdir(cache)) == 3


def test_cache_follows_image_files(model, image_files, tmp_path, count_runs):
    cache = tmp_path / "cache"
    first = embed(model, image_files, batch_size=2, cache_dir=cache, verbose=0)
    embed(model, image_files, batch_size=2, cache_dir=cache, verbose=0)
    assert len(count_runs) == 1
    Image.new("RGB", (40, 40), (10, 200, 30)).save(image_files[3])
    stat = os.stat(image_files[3])
    os.utime(image_files[3], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    second = embed(model, image_files, batch_size=2, cache_dir=cache, verbose=0)
    assert len(count_runs) == 2
    np.testing.assert_array_equal(first[:3], second[:3])
    assert not np.allclose(first[3], second[3])
    dynamic = build(size=None, name=model.name)
    dynamic.set_weights(model.get_weights())
    embed(dynamic, image_files, image_size=SIZE, cache_dir=cache, verbose=0)
    embed(dynamic, image_files, image_size=SIZE, cache_dir=cache, verbose=0)
    embed(dynamic, image_files, image_size=40, cache_dir=cache, verbose=0)
    assert len(count_runs) == 4                            # load size is part of the key


def test_cache_follows_weights_and_preprocessing(images, tmp_path, count_runs):
    cache = tmp_path / "cache"
    torch_model = build("torch")
    embed(torch_model, images, cache_dir=cache, verbose=0)
    caffe_model = build("caffe")
    caffe_model.set_weights(torch_model.get_weights())
    assert caffe_model.name == torch_model.name
    embed(caffe_model, images, cache_dir=cache, verbose=0)
    assert len(count_runs) == 2

    kernel = torch_model.get_layer("conv5_block2_2_conv").kernel
    kernel.assign(kernel * 1.5)
    embed(torch_model, images, cache_dir=cache, verbose=0)
    assert len(count_runs) == 3
    embed(torch_model, images, cache_dir=cache, verbose=0)
    assert len(count_runs) == 3

    embed(torch_model, images, cache_dir=cache, weights_id="tv1", verbose=0)
    kernel.assign(kernel * 2.0)                           # the caller vouches for weights_id
    embed(torch_model, images, cache_dir=cache, weights_id="tv1", verbose=0)
    assert len(count_runs) == 4


def test_dataset_cache_needs_a_key_and_keeps_labels(model, images, tmp_path, count_runs):
    labels = np.array([3, 1, 4, 1, 5])
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    with pytest.raises(ValueError, match="cache_key"):
        embed(model, dataset, cache_dir=tmp_path)
    first = embed(model, dataset, cache_dir=tmp_path, cache_key="ds-v1", verbose=0)
    features, cached_labels = embed_dataset(model, dataset, cache_dir=tmp_path,
                                            cache_key="ds-v1", verbose=0)
    assert len(count_runs) == 1
    np.testing.assert_array_equal(features, first)
    np.testing.assert_array_equal(cached_labels, labels)


def test_cache_is_written_atomically_and_survives_corruption(model, images, tmp_path,
                                                             count_runs, monkeypatch):
    first = embed(model, images, cache_dir=tmp_path, verbose=0)
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable embeddings cache"):
        again = embed(model, images, cache_dir=tmp_path, verbose=0)
    np.testing.assert_allclose(again, first, rtol=1e-6)
    assert len(count_runs) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embed(model, images, cache_dir=tmp_path, verbose=0)   # rewritten, readable again
    assert len(count_runs) == 2

    def killed(file, **arrays):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        embed(model, images[:2], cache_dir=tmp_path, verbose=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]   # no partial file
