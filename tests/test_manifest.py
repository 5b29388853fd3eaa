"""Tests for weights_manifest.json and keras_vggres.weights.manifest: schema, lookups, overrides."""

import copy
import json
import os
import re
from pathlib import Path

import pytest

from keras_vggres.weights import manifest as mf
from keras_vggres.weights.spec import FileSpec

REPO = Path(__file__).resolve().parents[1]
MODELS = ("vgg11 vgg13 vgg16 vgg19 vgg11_bn vgg13_bn vgg16_bn vgg19_bn resnet18 resnet34 "
          "resnet50 resnet101 resnet152 resnet50v2 resnet101v2 resnet152v2").split()

# MD5s of the Keras-hosted files, copied independently from keras/src/applications (Keras 3.15.1).
KERAS_MD5 = {
    "vgg16": ("64373286793e3c8b2b4e3219cbf3544b", "6d6bbae143d832006294945121d1f1fc"),
    "vgg19": ("cbe5617147190e668d6c5d5026f83318", "253f8cb515780f3b799900260a226db6"),
    "resnet50": ("2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": ("f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": ("100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    "resnet50v2": ("3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917"),
    "resnet101v2": ("6343647c601c52e1368623803854d971", "c0ed64b8031c3730f411d2eb4eea35b5"),
    "resnet152v2": ("a49b44d1979771252814e80f8ec446f9", "ed17cf2e0169df9d443503ef94b23b33"),
}
TORCHVISION_MODELS = MODELS[:13]
TV2_MODELS = ("resnet50", "resnet101", "resnet152")


def _shipped():
    return json.loads((REPO / "weights_manifest.json").read_text())


def _override(tmp_path, monkeypatch, doc, name="extra.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    monkeypatch.setenv(mf.MANIFEST_ENV, str(path))
    return path


def _parse(doc):
    return mf._parse_document("test.json", json.dumps(doc))


# ----------------------------------------------------------------------------- shipped manifest


def test_packaged_file_is_the_top_level_manifest():
    packaged = REPO / "keras_vggres" / "weights_manifest.json"  # a real file (no symlink)
    assert packaged.read_bytes() == (REPO / "weights_manifest.json").read_bytes()
    assert mf._builtin_manifest()[1] == (REPO / "weights_manifest.json").read_text()


def test_shipped_manifest_validates_with_all_models():
    manifest = mf.reload_manifest()
    assert sorted(manifest) == sorted(MODELS)
    for model, entry in manifest.items():
        assert entry.default in entry.tags, model
        for tag, rec in entry.tags.items():
            assert isinstance(rec, mf.WeightsRecord) and (rec.model, rec.tag) == (model, tag)
            assert all(isinstance(f, FileSpec) for f in rec.files.values())


@pytest.mark.parametrize("model", MODELS)
def test_expected_tags_and_defaults(model):
    entry = mf.load_manifest()[model]
    expected = set()
    if model in KERAS_MD5:
        expected.add("keras")
    if model in TORCHVISION_MODELS:
        expected.add("tv1")
    if model in TV2_MODELS:
        expected.add("tv2")
    assert set(entry.tags) == expected
    assert entry.default == ("keras" if model in KERAS_MD5 else "tv1")


@pytest.mark.parametrize("model", sorted(KERAS_MD5))
def test_keras_files_match_keras_source(model):
    rec = mf.get_weights(model, "keras")
    assert (rec.source, rec.format, rec.license is not None) == ("keras", "keras-h5", True)
    top_md5, notop_md5 = KERAS_MD5[model]
    assert (rec.files["top"].md5, rec.files["notop"].md5) == (top_md5, notop_md5)
    folder = model if model.startswith("vgg") else "resnet"
    for kind, suffix in (("top", ""), ("notop", "_notop")):
        spec = rec.files[kind]
        assert spec.name == f"{model}_weights_tf_dim_ordering_tf_kernels{suffix}.h5"
        assert spec.url == ("https://storage.googleapis.com/tensorflow/keras-applications/"
                            f"{folder}/{spec.name}")
    expected_mode = "tf" if model.endswith("v2") else "caffe"
    expected_variant = None if model.startswith("vgg") else "v2" if model.endswith("v2") else "v1"
    assert (rec.preprocess, rec.variant) == (expected_mode, expected_variant)


@pytest.mark.parametrize("model, tag", [(m, "tv1") for m in TORCHVISION_MODELS]
                         + [(m, "tv2") for m in TV2_MODELS])
def test_torchvision_files_carry_their_hash_prefix(model, tag):
    rec = mf.get_weights(model, tag)
    spec = rec.files["top"]
    assert set(rec.files) == {"top"}
    assert re.fullmatch(r"[0-9a-f]{8}", spec.sha256_prefix)
    assert spec.name == f"{model}-{spec.sha256_prefix}.pth"
    assert spec.url == f"https://download.pytorch.org/models/{spec.name}"
    assert spec.size is None and rec.size_mib["top"] > 1
    assert (rec.source, rec.format, rec.preprocess, rec.license) == (
        "torchvision", "torch-pth", "torch", "BSD-3-Clause")
    assert rec.variant == ("v1.5" if model in TV2_MODELS else None)
    assert rec.transform.resize == (232 if tag == "tv2" else 256) and rec.transform.crop == 224
    assert rec.params > 1e6 and rec.gflops > 1 and 60 < rec.metrics["top1"] < rec.metrics["top5"]


def test_every_file_name_is_its_url_basename_and_unique():
    names = []
    for entry in mf.load_manifest().values():
        for rec in entry.tags.values():
            for spec in rec.files.values():
                assert spec.url.rsplit("/", 1)[1] == spec.name
                names.append(spec.name)
    assert len(names) == len(set(names))


def test_spot_values():
    assert mf.get_weights("vgg16").params == 138357544
    resnet50 = mf.get_weights("resnet50")
    assert (resnet50.metrics["top1"], resnet50.metrics["top5"]) == (74.9, 92.1)
    assert resnet50.files["top"].size == 102967424
    tv2 = mf.get_weights("resnet50", "tv2")
    assert (tv2.metrics["top1"], tv2.params, tv2.gflops) == (80.858, 25557032, 4.089)
    assert mf.get_weights("resnet18").transform == mf.Transform(256, 224, "bilinear")


# ----------------------------------------------------------------------------- lookups


def test_imagenet_alias_and_known_tags():
    assert mf.resolve_tag("resnet50", "imagenet") == "keras"
    assert mf.resolve_tag("resnet18", "imagenet") == "tv1"
    assert mf.resolve_tag("resnet50", "tv2") == "tv2"
    assert mf.get_weights("resnet18").tag == "tv1"
    assert mf.is_known_tag("resnet50", "imagenet") and mf.is_known_tag("resnet50", "tv2")
    assert not mf.is_known_tag("resnet50v2", "tv1")
    assert not mf.is_known_tag("resnet50", "/tmp/w.h5")
    assert not mf.is_known_tag("nosuchnet", "imagenet")
    assert not mf.is_known_tag("resnet50", None)


def test_unknown_tag_error_lists_valid_tags():
    with pytest.raises(ValueError, match=r"weights='tv3'.*'imagenet', 'keras', 'tv1', 'tv2'"):
        mf.resolve_tag("resnet50", "tv3")
    with pytest.raises(ValueError, match=r"weights='tv1'.*'imagenet', 'keras'"):
        mf.get_weights("resnet50v2", "tv1")


def test_unknown_model_error_lists_known_models():
    with pytest.raises(ValueError, match=r"model='resnet5'.*'resnet50'"):
        mf.get_weights("resnet5")


def test_list_weights_metadata():
    listed = mf.list_weights("resnet50")
    assert list(listed) == ["keras", "tv1", "tv2"]
    assert [t for t, meta in listed.items() if meta["default"]] == ["keras"]
    meta = listed["tv2"]
    for key in ("source", "format", "variant", "preprocess", "transform", "metrics", "params",
                "gflops", "license", "files"):
        assert key in meta
    assert meta["transform"] == {"resize": 232, "crop": 224, "interpolation": "bilinear"}
    assert meta["files"]["top"]["sha256_prefix"] == "11ad3fa6"
    json.dumps(listed)  # plain data only


def test_file_for_picks_notop_when_available():
    keras_rec = mf.get_weights("resnet50", "keras")
    assert mf.file_for(keras_rec, include_top=True).name.endswith("kernels.h5")
    assert mf.file_for(keras_rec, include_top=False).name.endswith("kernels_notop.h5")
    tv = mf.get_weights("resnet50", "tv1")
    assert mf.file_for(tv, include_top=False) is tv.files["top"]


def test_file_for_notop_only_record_with_top_errors():
    doc = _shipped()
    rec = copy.deepcopy(doc["models"]["resnet50"]["tags"]["keras"])
    del rec["files"]["top"]
    record = _parse({"schema": 1, "models": {"x": {"default": "k", "tags": {"k": rec}}}})
    parsed = mf._merge({}, "a", record, "test.json")["x"].tags["k"]
    assert mf.file_for(parsed, include_top=False).name.endswith("_notop.h5")
    with pytest.raises(ValueError, match="include_top=False"):
        mf.file_for(parsed, include_top=True)


# ----------------------------------------------------------------------------- validation errors


def _doc_with(mutate):
    doc = _shipped()
    mutate(doc)
    return doc


def _keras_rec(doc):
    return doc["models"]["resnet50"]["tags"]["keras"]


def test_unknown_key_error_names_key_record_and_accepted():
    doc = _doc_with(lambda d: _keras_rec(d).update(colour="blue"))
    with pytest.raises(ValueError, match=r"test\.json.*models\.resnet50\.tags\.keras.*"
                                         r"unknown key 'colour'.*accepted keys.*'source'"):
        _parse(doc)


def test_unknown_file_key_error():
    doc = _doc_with(lambda d: _keras_rec(d)["files"]["top"].update(sha1="ab"))
    with pytest.raises(ValueError, match=r"files\.top.*unknown key 'sha1'.*'md5'"):
        _parse(doc)
    doc = _doc_with(lambda d: _keras_rec(d)["files"].update(head=_keras_rec(d)["files"]["top"]))
    with pytest.raises(ValueError, match=r"unknown key 'head'.*'top', 'notop'"):
        _parse(doc)


def test_missing_key_error():
    doc = _doc_with(lambda d: _keras_rec(d).pop("preprocess"))
    with pytest.raises(ValueError,
                       match=r"resnet50\.tags\.keras.*missing required key 'preprocess'"):
        _parse(doc)


@pytest.mark.parametrize("key, value", [("md5", "1234"), ("md5", "g" * 32), ("sha256", "ab" * 16),
                                        ("sha256_prefix", "abc")])
def test_malformed_hash_error(key, value):
    doc = _doc_with(lambda d: _keras_rec(d)["files"]["top"].update({key: value}))
    with pytest.raises(ValueError, match=rf"files\.top.*{key}='{value}' is malformed"):
        _parse(doc)


def test_file_without_hash_error():
    doc = _doc_with(lambda d: _keras_rec(d)["files"]["top"].pop("md5"))
    with pytest.raises(ValueError, match=r"files\.top.*at least one hash"):
        _parse(doc)


def test_unknown_format_error():
    doc = _doc_with(lambda d: _keras_rec(d).update(format="onnx"))
    with pytest.raises(ValueError,
                       match=r"format='onnx' is not one of \('keras-h5', 'torch-pth'\)"):
        _parse(doc)


@pytest.mark.parametrize("key, value, words", [
    ("preprocess", "bgr", r"preprocess='bgr' is not one of \('caffe', 'tf', 'torch'\)"),
    ("source", "hub", r"source='hub' is not one of"),
    ("variant", "v3", r"variant='v3' is not one of"),
    ("params", -5, r"params=-5 must be a positive integer"),
])
def test_bad_values_error(key, value, words):
    doc = _doc_with(lambda d: _keras_rec(d).update({key: value}))
    with pytest.raises(ValueError, match=words):
        _parse(doc)


def test_bad_transform_error():
    doc = _doc_with(lambda d: _keras_rec(d)["transform"].update(interpolation="cubic"))
    with pytest.raises(ValueError, match=r"transform.*interpolation='cubic' is not one of"):
        _parse(doc)


def test_bad_default_error(tmp_path, monkeypatch):
    doc = {"schema": 1, "models": {"resnet50": {"default": "tv9", "tags": {}}}}
    path = _override(tmp_path, monkeypatch, doc)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*resnet50.*default='tv9'.*"
                                         r"'keras', 'tv1', 'tv2'"):
        mf.load_manifest()


def test_bad_schema_and_json_errors(tmp_path, monkeypatch):
    path = _override(tmp_path, monkeypatch, {"schema": 2, "models": {}})
    with pytest.raises(ValueError, match=r"extra\.json.*schema=2"):
        mf.load_manifest()
    path.write_text("{not json")
    os.utime(path, ns=(1, 1))  # a new mtime so the cached result is not reused
    with pytest.raises(ValueError, match=r"extra\.json.*not valid JSON"):
        mf.load_manifest()


def test_missing_override_file_error(tmp_path, monkeypatch):
    monkeypatch.setenv(mf.MANIFEST_ENV, str(tmp_path / "absent.json"))
    with pytest.raises(FileNotFoundError, match=r"KERAS_VGGRES_MANIFEST.*absent\.json"):
        mf.load_manifest()


# ----------------------------------------------------------------------------- overrides


def _tinynet_record():
    return {
        "source": "custom", "format": "keras-h5", "variant": None,
        "files": {"top": {"name": "tinynet.h5", "url": "https://example.invalid/tinynet.h5",
                          "size": 1234, "md5": "0" * 32}},
        "preprocess": "tf", "transform": {"resize": 72, "crop": 64, "interpolation": "bicubic"},
        "metrics": {}, "params": None, "gflops": None, "license": None,
    }


def _one_model_doc(model, record):
    return {"schema": 1, "models": {model: {"default": "mine", "tags": {"mine": record}}}}


def test_override_extends_with_new_model(tmp_path, monkeypatch):
    doc = _one_model_doc("tinynet", _tinynet_record())
    _override(tmp_path, monkeypatch, doc)
    rec = mf.get_weights("tinynet")
    assert rec.tag == "mine" and rec.files["top"].size == 1234
    assert rec.transform == mf.Transform(72, 64, "bicubic")
    assert mf.resolve_tag("resnet50", "imagenet") == "keras"  # built-in entries kept
    monkeypatch.delenv(mf.MANIFEST_ENV)
    assert "tinynet" not in mf.load_manifest()  # the cache follows the variable


def test_override_adds_tag_and_changes_default(tmp_path, monkeypatch):
    doc = _one_model_doc("resnet18", _tinynet_record())
    _override(tmp_path, monkeypatch, doc)
    assert mf.resolve_tag("resnet18", "imagenet") == "mine"
    assert set(mf.list_weights("resnet18")) == {"tv1", "mine"}


def test_override_replaces_existing_record(tmp_path, monkeypatch):
    rec = copy.deepcopy(_keras_rec(_shipped()))
    rec["files"]["top"]["url"] = f"https://mirror.invalid/{rec['files']['top']['name']}"
    doc = {"schema": 1, "models": {"resnet50": {"tags": {"keras": rec}}}}
    _override(tmp_path, monkeypatch, doc)
    keras_rec = mf.get_weights("resnet50")
    assert keras_rec.files["top"].url.startswith("https://mirror.invalid/")
    assert keras_rec.files["top"].md5 == KERAS_MD5["resnet50"][0]
    assert mf.get_weights("resnet50", "tv2").files["top"].sha256_prefix == "11ad3fa6"


def test_override_is_validated(tmp_path, monkeypatch):
    rec = _tinynet_record()
    rec["files"]["top"]["md5"] = "xyz"
    path = _override(tmp_path, monkeypatch, _one_model_doc("tinynet", rec))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*tinynet\.tags\.mine.*md5"):
        mf.load_manifest()


def test_new_model_without_default_errors(tmp_path, monkeypatch):
    _override(tmp_path, monkeypatch,
              {"schema": 1, "models": {"tinynet": {"tags": {"mine": _tinynet_record()}}}})
    with pytest.raises(ValueError, match=r"tinynet.*default=None.*\('mine',\)"):
        mf.load_manifest()
