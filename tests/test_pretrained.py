"""`weights=<tag>` end to end: manifest -> download from a 127.0.0.1 server -> verify -> load.

The real weight hosts are unreachable here, so a test manifest (KERAS_VGGRES_MANIFEST) points
the tags at generated files served locally; everything after the URL is the production path.
"""

import hashlib
import json

import numpy as np
import pytest

import keras_vggres
from keras_vggres.weights import download, h5, manifest
from tests.support.http_server import FaultyServer
from tests.support.numerics import randomize_weights, rel_diff

SHAPE = (64, 64, 3)


@pytest.fixture
def server():
    srv = FaultyServer()
    yield srv
    srv.close()


def _record(url, name, body, *, source="keras", fmt="keras-h5", variant=None, preprocess="caffe",
            hash_kind="md5"):
    digest = hashlib.md5(body).hexdigest() if hash_kind == "md5" else None
    prefix = hashlib.sha256(body).hexdigest()[:8] if hash_kind == "sha256_prefix" else None
    file_record = {"name": name, "url": url, "size": len(body)}
    file_record.update({"md5": digest} if digest else {"sha256_prefix": prefix})
    return {"source": source, "format": fmt, "variant": variant,
            "files": {"top": file_record, "notop": file_record} if fmt == "keras-h5"
            else {"top": file_record},
            "preprocess": preprocess,
            "transform": {"resize": 256, "crop": 224, "interpolation": "bilinear"},
            "metrics": {"top1": None, "top5": None}, "params": None, "gflops": None,
            "license": "test"}


def _use_manifest(tmp_path, monkeypatch, models):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"schema": 1, "models": models}))
    monkeypatch.setenv("KERAS_VGGRES_MANIFEST", str(path))
    monkeypatch.delenv("KERAS_VGGRES_OFFLINE")
    manifest.reload_manifest()


def test_keras_tag_downloads_verifies_and_loads(tmp_path, monkeypatch, server):
    source = keras_vggres.ResNet50(weights=None, include_top=False, input_shape=SHAPE)
    randomize_weights(source, seed=5)
    h5.save_weights_h5(source, tmp_path / "r50.h5")
    body = (tmp_path / "r50.h5").read_bytes()
    url = server.add("/r50_notop.h5", body)
    _use_manifest(tmp_path, monkeypatch, {"resnet50": {"default": "keras", "tags": {
        "keras": _record(url, "r50_notop.h5", body, variant="v1")}}})

    model = keras_vggres.ResNet50(weights="imagenet", include_top=False, input_shape=SHAPE)
    x = np.random.default_rng(0).normal(0, 1, (1,) + SHAPE).astype("float32")
    assert rel_diff(model.predict(x, verbose=0), source.predict(x, verbose=0)) == 0.0
    assert len(server.gets("/r50_notop.h5")) == 1
    keras_vggres.ResNet50(weights="keras", include_top=False, input_shape=SHAPE)
    assert len(server.gets("/r50_notop.h5")) == 1  # second build: from the verified cache


def test_torchvision_tag_converts_once_and_caches(tmp_path, monkeypatch, server):
    from tests.support.synthetic_checkpoints import write_checkpoint

    pth = tmp_path / "resnet18-test.pth"
    write_checkpoint("resnet18", pth, seed=0)
    body = pth.read_bytes()
    name = f"resnet18-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    url = server.add(f"/{name}", body)
    _use_manifest(tmp_path, monkeypatch, {"resnet18": {"default": "tv1", "tags": {
        "tv1": _record(url, name, body, source="torchvision", fmt="torch-pth",
                       preprocess="torch", hash_kind="sha256_prefix")}}})

    model = keras_vggres.ResNet18(weights="imagenet", include_top=False, input_shape=SHAPE)
    cache_dir = download.cache_dir()
    converted = cache_dir / f"{name[:-4]}.resnet18_notop.keras_vggres.h5"
    assert converted.exists(), sorted(p.name for p in cache_dir.iterdir())
    stamp = converted.stat().st_mtime_ns
    again = keras_vggres.ResNet18(weights="tv1", include_top=False, input_shape=SHAPE)
    assert converted.stat().st_mtime_ns == stamp, "second load reuses the cached conversion"
    direct = keras_vggres.ResNet18(weights=str(pth), include_top=False, input_shape=SHAPE)
    for a, b, c in zip(model.weights, again.weights, direct.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(a.numpy(), c.numpy())
    assert len(server.gets(f"/{name}")) == 1


def test_offline_tag_missing_file_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_VGGRES_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"resnet18-f37072fd\.pth.*download\.pytorch\.org"):
        keras_vggres.ResNet18(weights="imagenet")


def test_weights_path_loads_and_wrong_file_leaves_model_untouched(tmp_path):
    source = keras_vggres.VGG11(weights=None, include_top=False, input_shape=SHAPE)
    randomize_weights(source, seed=7)
    h5.save_weights_h5(source, tmp_path / "vgg11.h5")
    model = keras_vggres.VGG11(weights=str(tmp_path / "vgg11.h5"), include_top=False,
                               input_shape=SHAPE)
    for a, b in zip(model.weights, source.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="block"):
        keras_vggres.VGG13(weights=str(tmp_path / "vgg11.h5"), include_top=False,
                           input_shape=SHAPE)


def test_classes_rule_for_path_weights_is_a_shape_error(tmp_path):
    source = keras_vggres.ResNet18(weights=None, input_shape=SHAPE)
    h5.save_weights_h5(source, tmp_path / "r18.h5")
    with pytest.raises(ValueError, match=r"predictions.*\(512, 10\).*\(512, 1000\)"):
        keras_vggres.ResNet18(weights=str(tmp_path / "r18.h5"), input_shape=SHAPE, classes=10)
