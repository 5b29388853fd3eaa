"""`keras_vggres.export` and `keras-vggres export`: every format, run by its own runtime.

One small fine-tuned run (VGG11-BN at 32 px: a nested backbone with BatchNorm, a head trained
on a toy dataset so its predictions are neither uniform nor saturated) is exported to every
format once. Each file is then loaded in a FRESH PROCESS by its own runtime only (Keras,
`tf.saved_model.load`, LiteRT's `ai_edge_litert` interpreter, ONNX Runtime; the LiteRT and
ONNX Runtime processes never import TensorFlow), fed the same raw RGB 0-255 images, and
compared with the Keras model; the class names are read back from each file there too.
"""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import keras_vggres
from keras_vggres import cli
from keras_vggres.exporting import calibration as calib
from keras_vggres.images import load_images
from keras_vggres.transfer import finetune, load_run, make_toy_dataset
from keras_vggres.transfer.runs import image_paths

SIZE = 32
# Measured here (60 toy images, 3 classes, mean top probability 0.46), largest relative
# difference from Keras: .keras and SavedModel 0, TFLite float32 7e-7, ONNX 7e-7, TFLite
# float16 7e-4; int8 keeps the top-1 class of 60/60 images (59/60 for a ResNet18 run), its
# probabilities within 0.004. 0.95 leaves room for near-ties of a random-feature backbone on
# other CPUs and kernels (XNNPACK vs reference), while a broken quantization (wrong scales,
# uncalibrated ranges) falls towards chance, ~0.33.
RTOL = {"float32": 1e-4, "float16": 1e-2}
INT8_TOP1_AGREEMENT = 0.95


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "data", classes=3, per_class=20,
                            size=SIZE, broken=False)


@pytest.fixture(scope="module")
def run_dir(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_VGGRES_OFFLINE", "1")
        finetune(toy.root, model="vgg11_bn", weights=None, image_size=SIZE, epochs_head=8,
                 epochs_finetune=0, batch_size=8, lr=0.05, verbose=0, out_dir=out)
    return str(out)


@pytest.fixture(scope="module")
def exported(toy, run_dir, tmp_path_factory):
    """Every format written once: through the API, and float16 TFLite through the CLI."""
    folder = tmp_path_factory.mktemp("exports")
    run = load_run(run_dir)
    files = {"keras": folder / "model.keras", "savedmodel": folder / "saved_model",
             "tflite": folder / "model.tflite", "int8": folder / "int8.tflite",
             "float16": folder / "float16.tflite", "onnx": folder / "model.onnx"}
    for key in ("keras", "savedmodel", "tflite", "onnx"):
        keras_vggres.export(run.model, files[key], key)
    keras_vggres.export(run.model, files["int8"], "tflite", quantize="int8",
                        calibration=toy.root)
    assert cli.main(["export", run_dir, "--format", "tflite", "--quantize", "float16",
                     "--out", str(files["float16"])]) == 0
    images = load_images(image_paths(toy.root), model=run.model)  # the calibration set
    np.save(folder / "images.npy", images)
    return {"folder": folder, "files": {k: str(v) for k, v in files.items()},
            "images": images, "reference": run.model.predict(images, verbose=0),
            "class_names": list(run.class_names)}


def _in_fresh_process(script, *args):
    """Run `script` in a new Python; returns the JSON it prints last."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_close(actual, reference, rtol):
    relative = np.abs(actual - reference) / np.maximum(np.abs(reference), 1e-6)
    assert actual.shape == reference.shape
    assert relative.max() <= rtol, f"max relative difference {relative.max():.3g} > {rtol}"


# ----------------------------------------------------------------------------- each runtime
KERAS_CHILD = """
import json, sys, zipfile
import keras, numpy as np
path, images, out = sys.argv[1:]
model = keras.models.load_model(path, compile=False)
np.save(out, model.predict(np.load(images), verbose=0))
record = json.loads(zipfile.ZipFile(path).read("keras_vggres.json"))
print(json.dumps({"class_names": record["weights"]["class_names"]}))
"""


def test_keras_file_loads_in_plain_keras(exported):
    out = exported["folder"] / "keras_out.npy"
    got = _in_fresh_process(KERAS_CHILD, exported["files"]["keras"],
                            exported["folder"] / "images.npy", out)
    _assert_close(np.load(out), exported["reference"], RTOL["float32"])
    assert got["class_names"] == exported["class_names"]
    assert load_run(exported["files"]["keras"]).class_names == tuple(exported["class_names"])


SAVEDMODEL_CHILD = """
import json, os, sys
import numpy as np, tensorflow as tf
path, images, out = sys.argv[1:]
loaded = tf.saved_model.load(path)
x = tf.constant(np.load(images))
np.save(out, loaded.serve(x).numpy())
classify = loaded.classify(x)
record = json.load(open(os.path.join(path, "assets.extra", "keras_vggres.json")))
print(json.dumps({"class_names": [n.decode() for n in classify["class_names"][0].numpy()],
                  "top": [n.decode() for n in classify["class_name"].numpy()],
                  "record": record}))
"""


def test_savedmodel_serves_and_classifies_in_tensorflow(exported):
    out = exported["folder"] / "savedmodel_out.npy"
    got = _in_fresh_process(SAVEDMODEL_CHILD, exported["files"]["savedmodel"],
                            exported["folder"] / "images.npy", out)
    _assert_close(np.load(out), exported["reference"], RTOL["float32"])
    names = exported["class_names"]
    assert got["class_names"] == names == got["record"]["class_names"]
    assert got["top"] == [names[i] for i in exported["reference"].argmax(-1)]
    assert got["record"]["input"]["shape"] == [None, SIZE, SIZE, 3]


LITERT_CHILD = """
import json, sys
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
images, *pairs = sys.argv[1:]
x, names = np.load(images), {}
for path, out in zip(pairs[::2], pairs[1::2]):
    runner = Interpreter(model_path=path).get_signature_runner("serve")
    np.save(out, runner(images=x)["probabilities"])
    model = schema.Model.GetRootAs(open(path, "rb").read())
    entries = [model.Metadata(i) for i in range(model.MetadataLength())]
    data = [model.Buffers(e.Buffer()).DataAsNumpy().tobytes() for e in entries
            if e.Name() == b"keras_vggres"]
    names[path] = json.loads(data[0])["class_names"]
print(json.dumps({"class_names": names, "tensorflow": "tensorflow" in sys.modules}))
"""


def test_tflite_float32_float16_int8_in_litert(exported):
    files, folder = exported["files"], exported["folder"]
    keys = ("tflite", "float16", "int8")
    pairs = [item for key in keys for item in (files[key], folder / f"{key}_out.npy")]
    got = _in_fresh_process(LITERT_CHILD, folder / "images.npy", *pairs)
    assert got["tensorflow"] is False  # LiteRT alone ran the files
    assert got["class_names"] == {files[key]: exported["class_names"] for key in keys}
    reference = exported["reference"]
    _assert_close(np.load(folder / "tflite_out.npy"), reference, RTOL["float32"])
    _assert_close(np.load(folder / "float16_out.npy"), reference, RTOL["float16"])
    int8 = np.load(folder / "int8_out.npy")
    agreement = np.mean(int8.argmax(-1) == reference.argmax(-1))
    assert agreement >= INT8_TOP1_AGREEMENT, f"int8 top-1 agreement {agreement:.3f}"
    assert np.abs(int8 - reference).max() < 0.05
    sizes = {key: os.path.getsize(files[key]) for key in keys}
    assert sizes["int8"] < sizes["float16"] < sizes["tflite"]


ONNX_CHILD = """
import json, sys
import numpy as np, onnxruntime as ort
path, images, out = sys.argv[1:]
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
np.save(out, session.run(["probabilities"], {"images": np.load(images)})[0])
meta = session.get_modelmeta().custom_metadata_map
print(json.dumps({"class_names": json.loads(meta["class_names"]),
                  "record": json.loads(meta["keras_vggres"]),
                  "tensorflow": "tensorflow" in sys.modules}))
"""


def test_onnx_in_onnxruntime(exported):
    out = exported["folder"] / "onnx_out.npy"
    got = _in_fresh_process(ONNX_CHILD, exported["files"]["onnx"],
                            exported["folder"] / "images.npy", out)
    assert got["tensorflow"] is False
    _assert_close(np.load(out), exported["reference"], RTOL["float32"])
    assert got["class_names"] == exported["class_names"] == got["record"]["class_names"]
    assert got["record"]["weights"]["preprocess"] is not None


# ----------------------------------------------------------------------------- the CLI
def test_cli_exports_a_registered_model(tmp_path, capsys):
    out = tmp_path / "resnet18.keras"
    assert cli.main(["export", "resnet18", "--weights", "none", "--image-size", str(SIZE),
                     "--format", "keras", "--out", str(out)]) == 0
    assert "resnet18 -> " in capsys.readouterr().out
    model = keras_vggres.load_model(out)
    assert tuple(model.inputs[0].shape) == (None, SIZE, SIZE, 3)
    assert keras_vggres.weights_info(model).model == "resnet18"
    # that file, which carries no class names, exports again (and predicts by index only)
    pixels = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 3)).astype("float32")
    again = tmp_path / "again.keras"
    assert cli.main(["export", str(out), "--format", "keras", "--out", str(again)]) == 0
    assert "no class names" in capsys.readouterr().out
    np.testing.assert_allclose(keras_vggres.load_model(again).predict(pixels, verbose=0),
                               model.predict(pixels, verbose=0), rtol=1e-6)
    with pytest.raises(ValueError, match="carries no class names"):
        load_run(out)
    run = load_run(out, require_class_names=False)
    assert run.class_names is None
    with pytest.raises(ValueError, match="no class names to predict with.*run.model.predict"):
        run.predict(pixels)


@pytest.mark.parametrize("argv, message", [
    (["--format", "tflite", "--quantize", "int8", "--out", "m.tflite"], "needs `calibration`"),
    (["--format", "onnx", "--quantize", "float16", "--out", "m.onnx"],
     "not available for format='onnx'"),
    (["--format", "keras", "--weights", "none", "--out", "m.keras"],
     "--weights apply to a registered model name"),
    (["--format", "tflite", "--out", "m.onnx"], "ends with '.tflite'"),
])
def test_cli_bad_inputs_are_one_line_errors(run_dir, tmp_path, monkeypatch, capsys, argv,
                                            message):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["export", run_dir, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("keras-vggres export: error: ") and err.count("\n") == 1, err
    assert message in err
    assert list(tmp_path.iterdir()) == []


def test_cli_missing_run_and_bad_format(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "nowhere" / "model.keras"), "--format", "keras",
                     "--out", str(tmp_path / "m.keras")]) == 2
    assert "No run folder or model file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["export", "resnet18", "--format", "pt", "--out", "m.pt"])
    assert exc.value.code == 2
    assert "invalid choice: 'pt'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the API
@pytest.fixture(scope="module")
def tiny():
    """A 2-class classifier with preprocessing inside (a nested no-top backbone)."""
    backbone = keras_vggres.VGG11(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3),
                                  include_preprocessing=True)
    return keras_vggres.transfer.classifier(backbone, 2)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(format="pt"), ValueError, r"`format` must be one of \('keras', 'savedmodel', "
                                    r"'tflite', 'onnx'\); received format='pt'"),
    (dict(format="keras", quantize="int8", calibration="x"), ValueError,
     r"quantize='int8'` is not available for format='keras'.*\('tflite',\)"),
    (dict(format="tflite", quantize="int4"), ValueError, r"`quantize` must be one of"),
    (dict(format="tflite", quantize="int8"), ValueError, r"needs `calibration`.*calibration=None"),
    (dict(format="tflite", quantize="float16", calibration="x"), ValueError,
     r"`calibration` is used only with quantize='int8'"),
    (dict(format="onnx", path="model.tflite"), ValueError, r"ends with '.onnx'.*model.tflite"),
])
def test_argument_errors_name_argument_value_and_choices(tmp_path, kwargs, error, match):
    kwargs = dict(kwargs)
    path = tmp_path / kwargs.pop("path", "model." + {"savedmodel": "sm"}.get(
        kwargs["format"], kwargs["format"]))
    with pytest.raises(error, match=match):
        keras_vggres.export(None, path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_model_errors(tiny, tmp_path):
    plain = keras_vggres.VGG11(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3),
                               pooling="avg")
    with pytest.raises(ValueError, match="no preprocessing inside.*include_preprocessing=True"):
        keras_vggres.export(plain, tmp_path / "m.keras", "keras")
    with pytest.raises(ValueError, match=r"one name per output \(2\); received 3"):
        keras_vggres.export(tiny, tmp_path / "m.keras", "keras", class_names=["a", "b", "c"])
    with pytest.raises(TypeError, match="sequence of str"):
        keras_vggres.export(tiny, tmp_path / "m.keras", "keras", class_names="ab")
    assert list(tmp_path.iterdir()) == []


def test_missing_converter_names_the_extra(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"format='onnx' needs `pip install "
                                                  r"keras_vggres\[onnx\]`.*tf2onnx"):
        keras_vggres.export(tiny, tmp_path / "m.onnx", "onnx")
    assert list(tmp_path.iterdir()) == []


def test_failed_export_keeps_the_previous_output(tiny, tmp_path, monkeypatch):
    """A failure half-way (the SavedModel is written, then its record cannot be) leaves the
    previous export in place and no temporary behind."""
    from keras_vggres.exporting import record

    target = tmp_path / "saved_model"
    target.mkdir()
    (target / "saved_model.pb").write_text("previous export")
    unserialisable = {"class_names": ["a", "b"], "oops": object()}
    monkeypatch.setattr(record, "export_record", lambda *args, **kwargs: unserialisable)
    with pytest.raises(TypeError, match="not JSON serializable"):
        keras_vggres.export(tiny, target, "savedmodel")
    assert [p.name for p in tmp_path.iterdir()] == ["saved_model"]
    assert [p.name for p in target.iterdir()] == ["saved_model.pb"]


@pytest.mark.parametrize("where", ["folder", "cwd", "run"])
def test_savedmodel_never_replaces_a_folder_that_is_not_one(tiny, tmp_path, monkeypatch, where):
    """Only an empty folder or an earlier SavedModel is replaced: not the current folder, not a
    run folder holding the very model being exported, not a folder of the user's files."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    if where == "run":
        keras_vggres.export(tiny, target / "model.keras", "keras")
    path = target
    if where == "cwd":
        monkeypatch.chdir(target)
        path = "."
    before = sorted(p.name for p in target.iterdir())
    with pytest.raises(ValueError, match=r"format='savedmodel' replaces the folder at path=.*"
                                         r"neither empty nor a SavedModel.*'saved_model.pb'"):
        keras_vggres.export(tiny, path, "savedmodel")
    from keras_vggres.saving import export_saved_model

    with pytest.raises(ValueError, match=r"export_saved_model\(\) replaces the folder"):
        export_saved_model(tiny, path)  # the writer the run folder uses checks it too
    assert sorted(p.name for p in target.iterdir()) == before
    assert (target / "notes.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("format", ["keras", "tflite", "onnx"])
def test_file_formats_refuse_a_folder_before_converting(tiny, tmp_path, monkeypatch, format):
    from keras_vggres.exporting import api

    target = tmp_path / f"m.{format}"
    target.mkdir()
    monkeypatch.setattr(api, "_require_packages", None)  # proves no later step was reached
    with pytest.raises(ValueError, match=rf"format='{format}' writes a file, but path=.* is a "
                                         r"folder"):
        keras_vggres.export(tiny, target, format)
    assert [p.name for p in tmp_path.iterdir()] == [f"m.{format}"]


def test_keras_export_carries_class_names(tiny, tmp_path):
    path = keras_vggres.export(tiny, tmp_path / "m.keras", "keras", class_names=["cat", "dog"])
    run = load_run(path)
    assert run.class_names == ("cat", "dog")
    with zipfile.ZipFile(path) as archive:
        assert json.loads(archive.read("keras_vggres.json"))["weights"]["class_names"] == [
            "cat", "dog"]


def test_calibration_array_is_checked_and_copied(tiny):
    images = np.full((3, SIZE, SIZE, 3), 128, dtype=np.uint8)
    samples = list(calib.representative_dataset(tiny, images)())
    assert len(samples) == 3 and samples[0][0].shape == (1, SIZE, SIZE, 3)
    assert samples[0][0].dtype == np.float32
    samples[0][0][...] = 0
    assert images.min() == 128  # the caller's array is untouched
    with pytest.raises(ValueError, match=r"shaped \(N >= 1,\) \+ \(32, 32, 3\).*\(3, 16, 16, 3\)"):
        calib.representative_dataset(tiny, np.zeros((3, 16, 16, 3)))
    with pytest.raises(ValueError, match="0-255"):
        calib.representative_dataset(tiny, np.full((1, SIZE, SIZE, 3), 300.0))
    with pytest.raises(TypeError, match="calibration"):
        calib.representative_dataset(tiny, 42)


def test_cli_parser_and_export_module_import_no_tensorflow():
    code = ("import sys; from keras_vggres import cli, exporting; cli.build_parser(); "
            "print(sorted({'keras', 'tensorflow'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
