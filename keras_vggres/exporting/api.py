"""`export(model, path, format)`: one classifier -> a `.keras` file, a SavedModel, TFLite or ONNX.

Checks every argument before any work, then hands the model to the format's writer. Each
writer uses the format's own converter (Keras `model.save` / `ExportArchive`,
`tf.lite.TFLiteConverter`, tf2onnx) and publishes its output with `_atomic.replacing`: a
failed export leaves the previous file (or nothing) at `path`, never half a file. Keras-free at
import (the CLI reads the tables below without starting TensorFlow).
"""

from __future__ import annotations

import importlib
import os

from keras_vggres._checks import EXPORT_FORMATS, QUANTIZATIONS, check_choice

FORMATS = EXPORT_FORMATS
# The quantizations each format accepts (None: float32, as trained).
QUANTIZE_FOR = {"keras": (None,), "savedmodel": (None,), "tflite": QUANTIZATIONS,
                "onnx": (None,)}
# What `path` must end with; a SavedModel is a folder, any name.
SUFFIXES = {"keras": ".keras", "savedmodel": "", "tflite": ".tflite", "onnx": ".onnx"}
# The file every SavedModel folder holds: only such a folder (or an empty one) is replaced.
SAVEDMODEL_MARK = "saved_model.pb"
# format: (the `pip install keras_vggres[extra]` that brings it, modules the export imports).
# TFLite conversion is part of TensorFlow; its runtime (extra `tflite`) only runs the files.
EXTRAS = {"onnx": ("onnx", ("tf2onnx", "onnx"))}
WRITERS = {"keras": "keras_vggres.exporting.keras_file",
           "savedmodel": "keras_vggres.exporting.savedmodel",
           "tflite": "keras_vggres.exporting.tflite", "onnx": "keras_vggres.exporting.onnx"}


def export(model, path, format, *, quantize=None, calibration=None, class_names=None):
    """Export a classifier for deployment, preprocessing inside: raw RGB 0-255 float32 in.

    Formats, and where each carries the class names:
    - "keras": a `.keras` file (`keras_vggres.save_model`); its `keras_vggres.json` entry
      (what `load_run` and `keras_vggres.load_model` read).
    - "savedmodel": a SavedModel folder, endpoints `serve` (images -> probabilities) and,
      with class names, `classify` (also the top class and every class name);
      `assets.extra/keras_vggres.json` holds the record.
    - "tflite": a `.tflite` file (LiteRT), signature `serve`: `images` -> `probabilities`;
      the record is the model metadata entry `keras_vggres`.
    - "onnx": a `.onnx` file (tf2onnx), input `images`, output `probabilities`;
      `metadata_props` `class_names` (a JSON list) and `keras_vggres` (the record).

    Every format has a dynamic batch dimension. The JSON record holds the class names, the
    input contract and the model's weights record (preprocessing, eval transform).

    Args:
        model: a Keras classifier with its preprocessing inside (built with
            `include_preprocessing=True`, or a `classifier()` on such a backbone, or a
            fine-tuned run's model from `keras_vggres.transfer.load_run(...).model`).
        path: the output: a file ending `.keras` / `.tflite` / `.onnx`, or a folder for a
            SavedModel; replaced all at once if it exists (its folder is created).
        format: one of `FORMATS`: "keras", "savedmodel", "tflite" or "onnx".
        quantize: TFLite only: None (float32), "float16" (float16 weights, float32
            compute) or "int8" (full-integer weights and activations, calibrated on
            `calibration`; float32 input and output).
        calibration: for `quantize="int8"` (required there, refused otherwise): a folder of
            images (searched recursively), a list of image paths, or an array (N, H, W, 3)
            of raw RGB 0-255. Images are loaded with the model's own eval transform
            (`load_images(paths, model=model)`); a few hundred representative images are
            plenty.
        class_names: one name per output; default: the names the model carries (a fine-tuned
            run's, ImageNet's for a 1000-class ImageNet model), else none are written.

    Returns:
        `path` as a string.
    """
    path = check_request(format, path, quantize=quantize, calibration=calibration)
    if format != "keras":
        from keras_vggres._backend import require_tensorflow

        require_tensorflow(f"export(format={format!r})",
                           instead="format='keras' works on every backend.")
    from keras_vggres.exporting.record import checked_model, export_record, resolve_class_names

    model = checked_model(model)
    names = resolve_class_names(model, class_names)
    record = export_record(model, names, format=format, quantize=quantize)
    writer = importlib.import_module(WRITERS[format])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    writer.write(model, path, record=record, quantize=quantize, calibration=calibration)
    return path


def check_request(format, path, *, quantize=None, calibration=None):
    """Everything about an export that can be checked before the model is built or loaded
    (the CLI calls it first); returns `path` as a string."""
    check_choice("format", format, FORMATS)
    _check_quantize(format, quantize, calibration)
    path = _check_path(format, path)
    _require_packages(format)
    return path


def _check_quantize(format, quantize, calibration):
    check_choice("quantize", quantize, QUANTIZATIONS)
    if quantize not in QUANTIZE_FOR[format]:
        able = tuple(f for f, accepted in QUANTIZE_FOR.items() if quantize in accepted)
        raise ValueError(f"`quantize={quantize!r}` is not available for format={format!r}; "
                         f"it accepts quantize in {QUANTIZE_FOR[format]}. Formats with "
                         f"quantize={quantize!r}: {able}.")
    if quantize == "int8" and calibration is None:
        raise ValueError("`quantize='int8'` needs `calibration`: a folder of images, a list of "
                         "image paths or an array (N, H, W, 3) of raw RGB 0-255 to calibrate "
                         "the integer ranges on; received calibration=None.")
    if quantize != "int8" and calibration is not None:
        raise ValueError("`calibration` is used only with quantize='int8' (it calibrates the "
                         f"integer ranges); received quantize={quantize!r} with calibration "
                         "data. Pass quantize='int8' or drop calibration.")


def _check_path(format, path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike; received path={path!r}.")
    path = os.path.normpath(os.fspath(path))
    suffix = SUFFIXES[format]
    if suffix and not path.endswith(suffix):
        raise ValueError(f"format={format!r} writes a file whose name ends with {suffix!r}; "
                         f"received path={path!r}.")
    if suffix and os.path.isdir(path):
        raise ValueError(f"format={format!r} writes a file, but path={path!r} is a folder.")
    if not suffix and os.path.isfile(path):
        raise ValueError(f"format={format!r} writes a folder, but path={path!r} is a file.")
    if not suffix:
        check_savedmodel_target(path, f"format={format!r}")
    return path


def check_savedmodel_target(path, writer="a SavedModel export"):
    """Only an empty folder or an earlier SavedModel may be replaced by a SavedModel export."""
    if (os.path.isdir(path) and os.listdir(path)
            and not os.path.isfile(os.path.join(path, SAVEDMODEL_MARK))):
        raise ValueError(f"{writer} replaces the folder at path={path!r}, which is neither "
                         f"empty nor a SavedModel (no {SAVEDMODEL_MARK!r}); pass a new folder "
                         "name, an empty folder or an earlier SavedModel export.")


def _require_packages(format):
    """Import what `format` needs up front, naming the extra that installs it when missing."""
    if format not in EXTRAS:
        return
    extra, modules = EXTRAS[format]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ModuleNotFoundError(
                f"format={format!r} needs `pip install keras_vggres[{extra}]` (missing: "
                f"{module}: {error}).", name=module) from error
