"""The user's journey across processes and entry points (issue: models that reload anywhere,
know their weights, and predict with their own class names).

Saved models are loaded in fresh processes, one of which cannot import keras_vggres at all;
the CLI and the Python API are called on the same inputs and compared.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_vggres
from keras_vggres import cli
from keras_vggres.transfer import classifier, embed, extract_features, finetune, load_run
from keras_vggres.transfer.toydata import make_toy_dataset
from keras_vggres.weights import manifest
from keras_vggres.weights.h5 import save_weights_h5
from tests.support.numerics import randomize_weights, rel_diff

SIZE = 32
BLOCK_PACKAGE = textwrap.dedent("""
    import sys

    class _NoKerasVggres:  # this process cannot import keras_vggres: as if not installed
        def find_spec(self, name, path=None, target=None):
            if name == "keras_vggres" or name.startswith("keras_vggres."):
                raise ImportError("keras_vggres is not installed here")

    sys.meta_path.insert(0, _NoKerasVggres())
    try:
        import keras_vggres
    except ImportError:
        pass
    else:
        raise SystemExit("keras_vggres was importable")
""")
LOAD_AND_PREDICT = textwrap.dedent("""
    import numpy as np, keras
    model = keras.models.load_model(sys.argv[1])
    np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
    print(type(model).__name__, [type(layer).__module__ for layer in model.layers][:3])
""")


def _run(code, *args, env=None):
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {})))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _reload_without_package(tmp_path, model_path, x):
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npy"
    _run(BLOCK_PACKAGE + LOAD_AND_PREDICT, model_path, tmp_path / "x.npy", out)
    return np.load(out)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "data", classes=3, per_class=10,
                            size=48, broken=False)


@pytest.fixture(scope="module")
def run(toy, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_VGGRES_OFFLINE", "1")
        return finetune(toy.root, model="resnet18", weights=None, image_size=SIZE,
                        batch_size=8, epochs_head=2, epochs_finetune=1, lr=0.05,
                        validation_split=0.25, verbose=0, out_dir=tmp_path_factory.mktemp("run"))


def _pixels(n=2, size=SIZE, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


# ----------------------------------------------------------------------------- reload anywhere
@pytest.mark.parametrize("builder, mode", [("VGG11BN", "torch"), ("ResNet50", "caffe"),
                                           ("ResNet50V2", "tf")])
def test_builder_with_preprocessing_reloads_without_the_package(tmp_path, builder, mode):
    model = getattr(keras_vggres, builder)(weights=None, include_top=False,
                                            input_shape=(SIZE, SIZE, 3),
                                            include_preprocessing=mode, pooling="avg")
    randomize_weights(model)
    path = tmp_path / "m.keras"
    model.save(path)
    x = _pixels()
    expected = model.predict(x, verbose=0)
    assert rel_diff(_reload_without_package(tmp_path, path, x), expected) <= 1e-6
    inside = keras_vggres.preprocess_input(x, mode=mode)
    plain = getattr(keras_vggres, builder)(weights=None, include_top=False,
                                            input_shape=(SIZE, SIZE, 3), pooling="avg")
    plain.set_weights(model.get_weights())
    assert rel_diff(expected, plain.predict(inside, verbose=0)) <= 1e-5


def test_classifier_reloads_without_the_package(tmp_path):
    backbone = keras_vggres.ResNet18(weights=None, include_top=False,
                                     input_shape=(SIZE, SIZE, 3), include_preprocessing=True)
    model = classifier(backbone, 4, dropout=0.5, hidden=8)
    path = tmp_path / "c.keras"
    model.save(path)
    x = _pixels(3)
    expected = model.predict(x, verbose=0)
    assert rel_diff(_reload_without_package(tmp_path, path, x), expected) <= 1e-6


def test_finetune_export_reloads_without_the_package(tmp_path, run):
    x = _pixels(3)
    expected = keras.models.load_model(run.model_path).predict(x, verbose=0)
    assert rel_diff(_reload_without_package(tmp_path, run.model_path, x), expected) <= 1e-6


def test_import_alone_registers_our_objects_without_importing_keras(tmp_path):
    model = keras_vggres.optimize_for_inference(
        keras_vggres.ResNet18(weights=None, input_shape=(SIZE, SIZE, 3), include_top=False,
                              include_preprocessing=True))
    path = tmp_path / "fast.keras"
    model.save(path)
    x = _pixels()
    np.save(tmp_path / "x.npy", x)
    out = _run(textwrap.dedent("""
        import sys
        import keras_vggres
        light = [m for m in ("keras", "tensorflow") if m in sys.modules]
        assert not light, f"import keras_vggres imported {light}"
        import numpy as np, keras
        model = keras.models.load_model(sys.argv[1])
        np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
        print(type(model).__name__)
    """), path, tmp_path / "x.npy", tmp_path / "y.npy")
    assert out.strip() == "InferenceModel"
    assert rel_diff(np.load(tmp_path / "y.npy"), model.predict(x, verbose=0)) <= 1e-6


@pytest.mark.parametrize("first_import", [
    "import keras_vggres", "from keras_vggres.resnet50 import ResNet50, preprocess_input",
    "from keras_vggres import optimize_for_inference", "import keras; import keras_vggres"])
def test_every_way_in_registers_every_object(first_import):
    """Keras may first be imported by one of our own modules: registration must still work."""
    out = _run(textwrap.dedent(f"""
        import warnings
        warnings.simplefilter("error")
        {first_import}
        import keras
        names = ["keras_vggres>InferenceModel", "keras_vggres>WarmupCosine",
                 "keras_vggres>ImageNetPreprocessing"]
        print([keras.saving.get_registered_object(n) is not None for n in names])
    """))
    assert out.strip().splitlines()[-1] == "[True, True, True]"


# ----------------------------------------------------------------------------- weights everywhere
@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A ResNet18 legacy HDF5 weights file with peaky (non-uniform) outputs."""
    model = keras_vggres.ResNet18(weights=None)
    randomize_weights(model, seed=3)
    kernel, bias = model.get_layer("predictions").get_weights()
    model.get_layer("predictions").set_weights([kernel * 50, bias])
    path = tmp_path_factory.mktemp("w") / "resnet18_mine.h5"
    save_weights_h5(model, path)
    return path


def _sample_images():
    folder = Path(__file__).resolve().parents[1] / "examples" / "images"
    return sorted(str(p) for p in folder.glob("*.jpg"))[:3]


def test_classify_with_a_weights_file_matches_the_python_api(weights_file, capsys):
    images = _sample_images()
    assert cli.main(["classify", *images, "--model", "resnet18", "--weights", str(weights_file),
                     "--top", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cli_top1 = [lines[i + 1].split()[1] for i in range(0, len(lines), 2)]
    model = keras_vggres.ResNet18(weights=str(weights_file))
    info = keras_vggres.weights_info(model)
    assert info.source == "file" and "preprocess" in info.assumed
    batch = keras_vggres.get_preprocessing(model)(keras_vggres.load_images(images, model=model))
    api_top1 = [row[0][1] for row in
                keras_vggres.decode_predictions(model.predict(batch, verbose=0), top=1)]
    assert cli_top1 == api_top1


def test_extract_with_a_weights_file_matches_the_python_api(weights_file, tmp_path, capsys):
    images = _sample_images()
    out = tmp_path / "f.npz"
    assert cli.main(["extract", *images, "--model", "resnet18", "--weights", str(weights_file),
                     "--image-size", "64", "--out", str(out), "--quiet"]) == 0
    api, *_ = extract_features(images, model="resnet18", weights=str(weights_file),
                               image_size=64, out=None, verbose=0)
    np.testing.assert_allclose(np.load(out)["features"], api, rtol=1e-5, atol=1e-6)


def test_a_file_that_does_not_fit_the_model_is_a_clear_error(weights_file, capsys):
    assert cli.main(["classify", _sample_images()[0], "--model", "vgg11", "--weights",
                     str(weights_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resnet18_mine.h5" in err and "vgg11" in err


def test_a_runs_model_file_gives_its_backbone_to_a_builder(run, toy, tmp_path, capsys):
    """`--weights run/model.keras`: the fine-tuned backbone nested in the run's classifier
    loads into a no-top builder (extract, finetune again), and the whole classifier into a
    builder with the run's class count; a model it cannot fit is one clear line."""
    trained = keras.models.load_model(run.model_path).get_layer("resnet18")
    backbone = keras_vggres.ResNet18(weights=run.model_path, include_top=False,
                                     input_shape=(SIZE, SIZE, 3))
    for mine, theirs in zip(backbone.weights, trained.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine),
                                      keras.ops.convert_to_numpy(theirs))
    x = _pixels()
    whole = keras_vggres.ResNet18(weights=run.model_path, input_shape=(SIZE, SIZE, 3),
                                  classes=len(run.class_names), include_preprocessing=True)
    np.testing.assert_allclose(whole.predict(x, verbose=0),
                               keras_vggres.load_model(run.model_path).predict(x, verbose=0),
                               rtol=1e-5, atol=1e-7)
    out = tmp_path / "f.npz"
    images = _sample_images()
    assert cli.main(["extract", *images, "--model", "resnet18", "--weights", run.model_path,
                     "--image-size", str(SIZE), "--out", str(out), "--quiet"]) == 0
    api, *_ = extract_features(images, model="resnet18", weights=run.model_path,
                               image_size=SIZE, out=None, verbose=0)
    np.testing.assert_allclose(np.load(out)["features"], api, rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert cli.main(["extract", *images, "--model", "vgg11", "--weights", run.model_path,
                     "--image-size", str(SIZE), "--out", str(tmp_path / "g.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Cannot load" in err and "'vgg11'" in err
    assert not (tmp_path / "g.npz").exists()


def test_a_wrapper_adding_no_variables_is_not_an_ambiguous_match(tmp_path):
    """Sequential([backbone, pooling]) holds the backbone's very variables: one match, not two."""
    backbone = keras_vggres.VGG11(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    randomize_weights(backbone, seed=5)
    path = str(tmp_path / "wrapped.keras")
    keras.Sequential([backbone, keras.layers.GlobalAveragePooling2D()], name="features").save(path)
    loaded = keras_vggres.VGG11(weights=path, include_top=False, input_shape=(SIZE, SIZE, 3))
    for mine, theirs in zip(loaded.weights, backbone.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine),
                                      keras.ops.convert_to_numpy(theirs))


def test_when_the_fallback_cannot_read_the_file_keras_own_error_is_raised(tmp_path, monkeypatch):
    from keras_vggres.weights import nested

    path = str(tmp_path / "vgg.keras")
    keras_vggres.VGG11(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3)).save(path)

    def unreadable(*args):
        raise TypeError("could not be deserialized")

    monkeypatch.setattr(nested, "matching_submodel", unreadable)
    with pytest.raises(ValueError, match="could not be loaded") as err:
        keras_vggres.ResNet18(weights=path, include_top=False, input_shape=(SIZE, SIZE, 3))
    assert isinstance(err.value.__cause__, TypeError)


# ----------------------------------------------------------------------------- model knows its weights
@pytest.fixture
def custom_tag(tmp_path, monkeypatch):
    """A custom manifest tag of resnet18: torch preprocessing, 232 -> 224 bicubic."""
    model = keras_vggres.ResNet18(weights=None, include_top=False)
    randomize_weights(model, seed=5)
    cache = tmp_path / "cache"
    cache.mkdir()
    name = "resnet18_custom_notop.h5"
    save_weights_h5(model, cache / name)
    body = (cache / name).read_bytes()
    doc = {"schema": 1, "models": {"resnet18": {"tags": {"custom232": {
        "source": "custom", "format": "keras-h5", "variant": "v1.5",
        "files": {"notop": {"name": name, "url": "https://example.invalid/" + name,
                            "size": len(body), "md5": hashlib.md5(body).hexdigest()}},
        "preprocess": "torch",
        "transform": {"resize": 232, "crop": 224, "interpolation": "bicubic"},
        "metrics": {}, "params": None, "gflops": None, "license": "test"}}}}}
    (tmp_path / "extra.json").write_text(json.dumps(doc))
    monkeypatch.setenv("KERAS_VGGRES_MANIFEST", str(tmp_path / "extra.json"))
    monkeypatch.setenv("KERAS_VGGRES_HOME", str(cache))
    manifest.reload_manifest()
    yield "custom232"
    monkeypatch.delenv("KERAS_VGGRES_MANIFEST")
    manifest.reload_manifest()


def test_the_tags_transform_is_used_by_load_images_embed_and_extract(custom_tag):
    images = _sample_images()
    m = keras_vggres.ResNet18(weights=custom_tag, include_top=False,
                              include_preprocessing=True, pooling="avg")
    info = keras_vggres.weights_info(m)
    assert (info.tag, info.preprocess, info.transform.resize, info.transform.crop,
            info.transform.interpolation) == (custom_tag, "torch", 232, 224, "bicubic")
    expected = keras_vggres.load_images(images, size=224, resize=232, interpolation="bicubic")
    np.testing.assert_array_equal(keras_vggres.load_images(images, model=m), expected)
    features = m.predict(expected, verbose=0)
    np.testing.assert_allclose(embed(m, images, verbose=0), features, rtol=1e-5, atol=1e-6)
    extracted, *_ = extract_features(images, model="resnet18", weights=custom_tag, out=None,
                                     verbose=0)
    np.testing.assert_allclose(extracted, features, rtol=1e-5, atol=1e-6)
    assert keras_vggres.get_preprocessing(m).mode == "raw"  # preprocessing is inside
    outside = keras_vggres.ResNet18(weights=custom_tag, include_top=False)
    assert keras_vggres.get_preprocessing(outside).mode == "torch"


def test_model_names_with_tags_reach_the_same_records(custom_tag):
    """The name + tag forms of the image side give what a model built with that tag gives."""
    images = _sample_images()[:2]
    m = keras_vggres.ResNet18(weights=custom_tag, include_top=False)
    by_name = keras_vggres.get_preprocessing("ResNet18", weights=custom_tag)
    assert by_name.mode == keras_vggres.get_preprocessing(m).mode == "torch"
    np.testing.assert_array_equal(
        keras_vggres.load_images(images, model="resnet18", weights=custom_tag),
        keras_vggres.load_images(images, model=m))
    from keras_vggres.imagenet import eval_transform

    assert eval_transform(custom_tag, model="resnet18") == keras_vggres.weights_info(m).transform
    assert keras_vggres.get_preprocessing("resnet50", weights="tv2").mode == "torch"
    assert keras_vggres.get_preprocessing("resnet50").mode == "caffe"
    with pytest.raises(ValueError, match=r"`model` must be one of .*'resnet5'"):
        keras_vggres.get_preprocessing("resnet5")


def test_saved_model_keeps_its_weights_record(tmp_path):
    model = keras_vggres.ResNet50(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3),
                                  variant="v1.5", include_preprocessing=True)
    path = keras_vggres.save_model(model, tmp_path / "m.keras")
    plain = keras.models.load_model(path)
    assert keras_vggres.weights_info(plain).source == "unknown"  # Keras alone: inferred
    assert keras_vggres.weights_info(plain).preprocess == "torch"
    reloaded = keras_vggres.load_model(path)
    assert keras_vggres.weights_info(reloaded) == keras_vggres.weights_info(model)


# ----------------------------------------------------------------------------- predict with class names
def test_load_run_predicts_with_the_runs_class_names(toy, run):
    loaded = load_run(run.out_dir)
    assert loaded.class_names == run.class_names
    paths = sorted(str(p) for p in Path(toy.root).rglob("*.jpg"))[:6]
    predictions = loaded.predict(paths, top=2)
    assert all(len(p) == 2 and p[0][0] in run.class_names for p in predictions)
    model = keras.models.load_model(run.model_path)
    probs = model.predict(keras_vggres.load_images(paths, model=loaded.model), verbose=0)
    assert [p[0][0] for p in predictions] == [run.class_names[i] for i in probs.argmax(1)]
    np.testing.assert_allclose([p[0][1] for p in predictions], probs.max(1), rtol=1e-5)
    from_file = load_run(run.model_path)  # the .keras file alone carries the names too
    assert from_file.class_names == run.class_names


def test_predict_skips_and_names_unreadable_files(toy, run, tmp_path, capsys):
    """A folder as finetune saw it, broken files included: they are named, the rest predicted."""
    folder = tmp_path / "mixed"
    shutil.copytree(os.path.join(toy.root, run.class_names[0]), folder)
    good = sorted(str(p) for p in folder.iterdir())
    (folder / "truncated.jpg").write_bytes(Path(good[0]).read_bytes()[:200])
    (folder / "empty.png").write_bytes(b"")
    os.symlink(tmp_path / "gone.png", folder / "zdangling.png")
    loaded = load_run(run.out_dir)
    with pytest.raises(ValueError, match="empty.png' is not an image file Pillow can read"):
        loaded.predict_proba(folder)
    paths, probabilities, skipped = loaded.predict_files(folder, batch_size=4)
    assert paths == good and [os.path.basename(p) for p, _ in skipped] == [
        "empty.png", "truncated.jpg", "zdangling.png"]
    np.testing.assert_allclose(probabilities, loaded.predict_proba(good), rtol=1e-5, atol=1e-7)
    capsys.readouterr()
    assert cli.main(["predict", run.out_dir, str(folder), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == len(good) + 1
    assert err.count("skipped ") == 3 and "truncated.jpg: " in err and "zdangling.png: " in err
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    shutil.copy(folder / "empty.png", only_bad)
    assert cli.main(["predict", run.out_dir, str(only_bad)]) == 2
    assert "None of the 1 images could be read" in capsys.readouterr().err


def test_a_run_file_takes_the_runs_class_names(run, tmp_path):
    """best.keras (a checkpoint, no record inside) is read with the run's run.json names, also
    through a symlink; a file's own names win over a run.json beside it, and a run.json that is
    not a run's is ignored."""
    best = os.path.join(run.out_dir, "best.keras")
    assert os.path.isfile(best)
    assert load_run(best).class_names == run.class_names
    os.symlink(best, tmp_path / "linked.keras")
    assert load_run(tmp_path / "linked.keras").class_names == run.class_names

    mine = tmp_path / "mine"
    mine.mkdir()
    own = ["x", "y", "z"]
    keras_vggres.export(load_run(run.out_dir).model, mine / "m.keras", "keras", class_names=own)
    (mine / "run.json").write_text(json.dumps({"class_names": ["a", "b", "c"]}))
    (mine / "state.json").write_text("{}")
    assert load_run(mine / "m.keras").class_names == tuple(own)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(best, other / "best.keras")
    (other / "run.json").write_text(json.dumps({"tool": "something else"}))
    with pytest.raises(ValueError, match="carries no class names"):
        load_run(other / "best.keras")  # no state.json: not a run, so run.json is not read


def test_predict_cli_equals_python(toy, run, tmp_path, capsys):
    folder = os.path.join(toy.root, run.class_names[0])
    out = tmp_path / "pred.json"
    assert cli.main(["predict", run.out_dir, folder, "--top", "3", "--format", "json",
                     "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    python = load_run(run.out_dir).predict(folder, top=3)
    assert [[p["class"] for p in row["predictions"]] for row in rows] == \
        [[name for name, _ in row] for row in python]
    capsys.readouterr()
    assert cli.main(["predict", run.out_dir, folder, "--format", "csv"]) == 0
    csv_lines = capsys.readouterr().out.strip().splitlines()
    assert csv_lines[0] == "path,rank,class,probability" and len(csv_lines) == len(rows) + 1


def test_saved_model_serves_class_names(toy, run):
    import tensorflow as tf

    loaded = tf.saved_model.load(run.saved_model_path)
    x = _pixels(2)
    out = loaded.classify(tf.constant(x))
    names = [n.decode() for n in out["class_name"].numpy()]
    probs = keras.models.load_model(run.model_path).predict(x, verbose=0)
    assert names == [run.class_names[i] for i in probs.argmax(1)]
    assert [n.decode() for n in out["class_names"].numpy()[0]] == list(run.class_names)
