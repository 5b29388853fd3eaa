"""format="savedmodel": a TensorFlow SavedModel folder (Keras' `ExportArchive`)."""

from __future__ import annotations


def write(model, path, *, record, quantize=None, calibration=None):
    """`saving.export_saved_model` (atomic, via a temporary folder): endpoint `serve`
    (images -> probabilities), with class names also `classify` (probabilities, the top
    class index and name, every class name), and the record in
    `assets.extra/keras_vggres.json`."""
    from keras_vggres.saving import export_saved_model

    export_saved_model(model, path, class_names=record["class_names"], record=record)
