"""Folder datasets: hygiene scan (skips with reasons, odd modes to RGB), splits, class weights,
preprocessing choice and the tf.data pipeline. Data comes from `make_toy_dataset` (48 px)."""

import json
import os
import shutil

import numpy as np
import pytest

from keras_vggres.imagenet import load_images, preprocess_input
from keras_vggres.transfer import datasets, hygiene
from keras_vggres.transfer.toydata import (BROKEN_FILES, ODD_MODE_FILES, WRONG_EXTENSION_FILES,
                                           make_toy_dataset)

SIZE = 48


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "data", classes=3, per_class=8,
                            size=SIZE)


@pytest.fixture(scope="module")
def scan(toy):
    return hygiene.scan_folder(toy.root)


def _good_paths(report):
    return {os.path.relpath(f.path, report.root): f for fs in report.files.values() for f in fs}


# ----------------------------------------------------------------------------- hygiene scan
def test_scan_counts_and_class_names(toy, scan):
    assert scan.layout == "classes"
    assert scan.class_names == tuple(sorted(toy.class_names))
    assert scan.counts == {"all": toy.good_counts["all"]}


@pytest.mark.parametrize("name", sorted(BROKEN_FILES))
def test_each_broken_kind_is_skipped_with_its_reason(toy, scan, name):
    rel = next(r for r in toy.broken if os.path.basename(r) == name)
    issues = {i.path: i for i in scan.skipped}
    assert issues[rel].code == BROKEN_FILES[name]
    assert hygiene.SKIP_CODES[issues[rel].code] in issues[rel].reason
    assert rel not in _good_paths(scan)


def test_wrong_extension_is_kept_with_a_warning(toy, scan):
    rel = toy.wrong_extension[0]
    assert os.path.basename(rel) == WRONG_EXTENSION_FILES[0]
    warning = next(i for i in scan.warnings if i.path == rel)
    assert "PNG content" in warning.reason and "'.jpg'" in warning.reason
    assert rel in _good_paths(scan)


@pytest.mark.parametrize("name", sorted(ODD_MODE_FILES))
def test_each_odd_mode_loads_as_rgb_exactly_as_load_images(toy, scan, name):
    rel = next(r for r in toy.odd_modes if os.path.basename(r) == name)
    image_file = _good_paths(scan)[rel]
    if ODD_MODE_FILES[name] != "L":  # 8-bit grayscale decodes straight to RGB
        assert image_file.convert
    decoded = datasets.decode_resize(image_file.path, (SIZE, SIZE)).numpy()
    expected = load_images(image_file.path, size=SIZE)[0]
    assert decoded.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(decoded, expected)  # one decoder: the same pixels


def test_pipelines_write_no_converted_copies(toy, scan, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    data = datasets.from_scan(scan, image_size=32, batch_size=8)
    assert sum(len(y) for _, y in data.train) == sum(scan.counts["all"].values())
    written = [n for n in os.listdir(tmp_path) if not n.startswith("__autograph_generated")]
    assert written == []  # nothing converted into a shared temp folder (TF's own files aside)


def test_report_text_and_save(toy, scan, tmp_path):
    text = str(scan)
    for rel, code in toy.broken.items():
        assert rel in text and f"[{code}]" in text
    json_path, txt_path = scan.save(tmp_path / "hygiene.json")
    saved = json.loads(open(json_path, encoding="utf-8").read())
    assert {i["path"]: i["code"] for i in saved["skipped"]} == toy.broken
    assert saved["counts"] == scan.counts
    assert {c["path"] for c in saved["converted"]} <= set(toy.odd_modes)
    assert open(txt_path, encoding="utf-8").read().strip() == text


def test_train_val_layout(tmp_path):
    toy = make_toy_dataset(tmp_path / "tv", classes=2, per_class=4, size=SIZE, broken=False,
                           layout="split", val_per_class=2)
    (tmp_path / "tv" / "test").mkdir()  # a test/ folder is ignored
    report = hygiene.scan_folder(toy.root)
    assert report.layout == "train/val"
    assert report.counts == toy.good_counts
    data = datasets.from_scan(report, image_size=SIZE, batch_size=4)
    assert (data.count("train"), data.count("val")) == (8, 4)
    with pytest.raises(ValueError, match="validation_split"):
        datasets.from_scan(report, image_size=SIZE, validation_split=0.2)


# ----------------------------------------------------------------------------- errors
def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        hygiene.scan_folder(missing)


def test_no_class_folders(tmp_path):
    (tmp_path / "loose.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="No class sub-folders"):
        datasets.from_folder(tmp_path)


def test_one_class_only(tmp_path):
    make_toy_dataset(tmp_path, classes=2, per_class=2, size=SIZE, broken=False)
    shutil.rmtree(tmp_path / "blue_squares")
    with pytest.raises(ValueError, match="Only one class folder.*red_circles"):
        hygiene.scan_folder(tmp_path)


def test_empty_class_after_skipping_broken_files(tmp_path):
    make_toy_dataset(tmp_path, classes=2, per_class=2, size=SIZE, broken=False)
    empty = tmp_path / "blue_squares"
    for f in empty.iterdir():
        f.write_bytes(b"")
    with pytest.raises(ValueError, match=r"'blue_squares' has no loadable images.*\['empty'\]"):
        hygiene.scan_folder(tmp_path)


def test_bad_arguments(scan):
    with pytest.raises(ValueError, match="validation_split"):
        datasets.from_scan(scan, validation_split=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        datasets.from_scan(scan, batch_size=0)
    with pytest.raises(ValueError, match="augment"):
        datasets.from_scan(scan, augment="heavy")
    with pytest.raises(ValueError, match="preprocessing"):
        datasets.from_scan(scan, preprocessing="imagenet")
    with pytest.raises(ValueError, match="needs `model`"):
        datasets.from_scan(scan, weights="tv1")


# ----------------------------------------------------------------------------- splits, weights
def test_stratified_split_is_deterministic(scan):
    a = datasets.split_files(scan, 0.25, seed=3)
    b = datasets.split_files(scan, 0.25, seed=3)
    c = datasets.split_files(scan, 0.25, seed=4)
    assert a == b and a != c
    train, val = ({f.path for f in a[s]} for s in ("train", "val"))
    assert not train & val and len(train | val) == sum(scan.counts["all"].values())
    for label, n in enumerate(scan.counts["all"].values()):
        assert sum(f.label == label for f in a["val"]) == round(n * 0.25)


def test_class_weights_balanced_formula():
    weights = datasets.compute_class_weights([10, 30, 20])
    np.testing.assert_allclose([weights[i] for i in range(3)], [60 / 30, 60 / 90, 60 / 60])
    assert datasets.compute_class_weights({"a": 5, "b": 5}) == {0: 1.0, 1: 1.0}
    with pytest.raises(ValueError, match="counts"):
        datasets.compute_class_weights([3, 0])


def test_imbalanced_folder_gets_class_weights(tmp_path):
    make_toy_dataset(tmp_path, classes=2, size=SIZE, broken=False, counts=[3, 9])
    data = datasets.from_folder(tmp_path, image_size=SIZE, batch_size=4)
    # sorted class names: blue_squares (9 images) then red_circles (3 images)
    assert data.class_weights == pytest.approx({0: 12 / 18, 1: 12 / 6})


# ----------------------------------------------------------------------------- pipelines
def test_pipeline_yields_every_good_file_once_per_epoch(scan):
    data = datasets.from_scan(scan, image_size=40, batch_size=5)
    assert data.preprocessing == "raw" and data.val is None
    for _ in range(2):  # second epoch comes from the cache
        labels = np.concatenate([y.numpy() for _, y in data.train])
        assert np.bincount(labels).tolist() == list(scan.counts["all"].values())
    images, _ = next(iter(data.train))
    assert images.shape[1:] == (40, 40, 3) and images.dtype.name == "float32"
    assert 0 <= float(np.min(images)) and float(np.max(images)) <= 255


def test_preprocessing_mode_from_model_and_weights(scan):
    assert datasets.resolve_preprocessing(model="vgg16", weights="keras") == "caffe"
    assert datasets.resolve_preprocessing(model="resnet18", weights=None) == "torch"
    assert datasets.resolve_preprocessing(model="resnet50v2", weights="none") == "tf"
    raw = datasets.from_scan(scan, image_size=32, batch_size=4, shuffle=False, cache=False)
    pre = datasets.from_scan(scan, image_size=32, batch_size=4, shuffle=False, cache=False,
                             model="vgg16", weights="keras")
    assert pre.preprocessing == "caffe"
    x_raw, _ = next(iter(raw.train))
    x_pre, _ = next(iter(pre.train))
    np.testing.assert_allclose(x_pre, preprocess_input(x_raw.numpy(), mode="caffe"), atol=1e-4)


def test_model_with_preprocessing_inside_keeps_raw_pixels():
    from keras_vggres import ResNet18

    inside = ResNet18(weights=None, include_top=False, input_shape=(32, 32, 3),
                      include_preprocessing=True)
    assert datasets.resolve_preprocessing(model=inside) == "raw"
    outside = ResNet18(weights=None, include_top=False, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="no ImageNetPreprocessing"):
        datasets.resolve_preprocessing(model=outside)


def test_augmentation_basic_and_callable(scan):
    plain = datasets.from_scan(scan, image_size=32, batch_size=8, shuffle=False, cache=False)
    basic = datasets.from_scan(scan, image_size=32, batch_size=8, shuffle=False, cache=False,
                               augment="basic")
    flipped = datasets.from_scan(scan, image_size=32, batch_size=8, shuffle=False, cache=False,
                                 augment=lambda x: x[:, :, ::-1, :])
    x, y = next(iter(plain.train))
    xb, yb = next(iter(basic.train))
    xf, _ = next(iter(flipped.train))
    np.testing.assert_array_equal(y, yb)
    assert xb.shape == x.shape and not np.allclose(xb, x)
    np.testing.assert_array_equal(xf, x.numpy()[:, :, ::-1, :])
    x_val, _ = next(iter(basic.make("train")))  # `make` without augment=True: no augmentation
    np.testing.assert_array_equal(x_val, x)
