"""`.keras` files that remember their weights record and class names; SavedModel exports.

`save_model` writes a model atomically with Keras' own `model.save`, then adds one JSON entry,
`keras_vggres.json` (the model's `WeightsInfo`: weights tag, preprocessing, eval transform,
class names), to the archive. Keras ignores that entry, so the file still loads anywhere with
`keras.models.load_model`; `load_model` here also restores the record, so a reloaded model
predicts with its own class names and image transform.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile

from keras_vggres._atomic import replacing
from keras_vggres._backend import require_tensorflow

INFO_ENTRY = "keras_vggres.json"
INFO_VERSION = 1


def save_model(model, path, *, info=None):
    """`model.save(path)` atomically, with `info` (default: `weights_info(model)`) inside."""
    from keras_vggres.weights.info import weights_info

    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"`path` must end with '.keras'; received path={path!r}.")
    info = info if info is not None else weights_info(model)
    with replacing(path, suffix=".keras", fsync=True) as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(INFO_ENTRY, json.dumps({"version": INFO_VERSION,
                                                     "weights": info.as_dict()}, indent=1))
    return path


def read_info(path):
    """The `WeightsInfo` stored in a `.keras` file by `save_model`, or None."""
    from keras_vggres.weights.info import WeightsInfo

    try:
        with zipfile.ZipFile(path) as archive:
            if INFO_ENTRY not in archive.namelist():
                return None
            raw = json.loads(archive.read(INFO_ENTRY).decode("utf-8"))
    except (OSError, zipfile.BadZipFile, ValueError, UnicodeDecodeError):
        return None
    try:
        return WeightsInfo.from_dict(raw["weights"])
    except (KeyError, TypeError, ValueError):
        return None


def load_model(path, *, compile=False):
    """`keras.models.load_model(path)` with the weights record of `save_model` re-attached."""
    import keras

    from keras_vggres.weights.info import attach

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path!r}.")
    model = keras.models.load_model(path, compile=compile)
    info = read_info(path)
    if info is not None:
        attach(model, info)
    return model


def export_saved_model(model, path, *, class_names=None, record=None):
    """A TensorFlow SavedModel (via a temporary folder) with two endpoints: `serve` (images
    -> probabilities) and, with `class_names`, `classify` (images -> probabilities, the top
    class index and its name as a string, and every class name). A `record` (a JSON-ready
    dict) is written to `assets.extra/keras_vggres.json`, readable without TensorFlow."""
    from keras_vggres.exporting.api import check_savedmodel_target

    check_savedmodel_target(os.fspath(path), "export_saved_model()")
    tf = require_tensorflow("export_saved_model() (a TensorFlow SavedModel)",
                            instead="On this backend, save a .keras file with "
                                    "keras_vggres.save_model and export it from TensorFlow.")
    from keras.export import ExportArchive

    signature = [tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), tf.float32,
                               name="images")]
    archive = ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda images: model(images, training=False), signature)
    if class_names:
        names = tf.constant([str(name) for name in class_names])

        def classify(images):
            probabilities = model(images, training=False)
            top = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            return {"probabilities": probabilities, "class_index": top,
                    "class_name": tf.gather(names, top),
                    "class_names": tf.broadcast_to(names, [tf.shape(top)[0], len(class_names)])}

        archive.add_endpoint("classify", classify, signature)
    with replacing(path) as tmp:
        with _quiet_tensorflow_logger():  # "INFO: Assets written to ..." on every export
            archive.write_out(tmp, verbose=False)
        if record is not None:
            os.makedirs(os.path.join(tmp, "assets.extra"))
            with open(os.path.join(tmp, "assets.extra", INFO_ENTRY), "x", encoding="utf-8") as f:
                json.dump(record, f, indent=1)
    return os.fspath(path)


@contextlib.contextmanager
def _quiet_tensorflow_logger():
    import tensorflow as tf

    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)
