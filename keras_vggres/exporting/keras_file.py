"""format="keras": a `.keras` file with the weights record and class names inside."""

from __future__ import annotations


def write(model, path, *, record, quantize=None, calibration=None):
    """`saving.save_model` (atomic): Keras' own format plus the `keras_vggres.json` entry
    (the `WeightsInfo` with the class names) that `load_run` and `load_model` read."""
    from keras_vggres.saving import save_model
    from keras_vggres.weights.info import weights_info

    info = weights_info(model)
    if record["class_names"] is not None:
        info = info.replace(class_names=tuple(record["class_names"]))
    save_model(model, path, info=info)
