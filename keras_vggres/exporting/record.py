"""What every export carries: the checked model, its class names and one JSON record.

The record (`export_record`) is the same in every format that has room for it: TFLite model
metadata and ONNX `metadata_props` under the name `keras_vggres`, a SavedModel's
`assets.extra/keras_vggres.json`. It states the input contract (raw RGB 0-255, float32, the
input shape), the class names and the model's weights record (preprocessing, eval transform),
so a deployed file says how to feed it and how to read its outputs.
"""

from __future__ import annotations

RECORD_NAME = "keras_vggres"
RECORD_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
INPUT_VALUES = "raw RGB 0-255 (preprocessing inside the model)"


def checked_model(model):
    """`model` if it is a one-input, one-output image classifier with preprocessing inside."""
    import keras

    from keras_vggres.preprocessing import preprocessing_layer

    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received an object of type "
                        f"{type(model).__name__}.")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"`model` must have one input and one output (a classifier); model "
                         f"{model.name!r} has {len(model.inputs)} inputs and "
                         f"{len(model.outputs)} outputs.")
    shape, out = tuple(model.inputs[0].shape), tuple(model.outputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3 or len(out) != 2:
        raise ValueError(f"`model` must map images (batch, height, width, 3) to scores "
                         f"(batch, classes); model {model.name!r} maps {shape} to {out}.")
    if preprocessing_layer(model) is None:
        raise ValueError(f"`model` {model.name!r} has no preprocessing inside, so its exports "
                         "would not take raw RGB 0-255 images: build it with "
                         "include_preprocessing=True (e.g. keras_vggres.ResNet50(weights="
                         "'imagenet', include_preprocessing=True), or a classifier() on such a "
                         "backbone).")
    return model


def resolve_class_names(model, class_names):
    """The class names to export: `class_names` if given, else the model's own, else None."""
    from keras_vggres.weights.info import weights_info

    outputs = int(model.outputs[0].shape[-1])
    if class_names is None:
        names = weights_info(model).class_names
        if names is None:
            return None
        if len(names) != outputs:
            raise ValueError(f"The model's record carries {len(names)} class names for "
                             f"{outputs} outputs; pass class_names= explicitly.")
        return tuple(names)
    names = None if isinstance(class_names, (str, bytes)) else _as_tuple(class_names)
    if names is None or not all(isinstance(name, str) for name in names):
        raise TypeError("`class_names` must be a sequence of str (one per output); received "
                        f"class_names={class_names!r}.")
    if len(names) != outputs:
        raise ValueError(f"`class_names` must have one name per output ({outputs}); received "
                         f"{len(names)} names.")
    return names


def _as_tuple(value):
    try:
        return tuple(value)
    except TypeError:
        return None


def export_record(model, class_names, *, format, quantize):
    """The JSON-ready record of an export (see the module docstring)."""
    from keras_vggres import __version__
    from keras_vggres.weights.info import weights_info

    info = weights_info(model)
    if class_names is not None:
        info = info.replace(class_names=tuple(class_names))
    return {"version": RECORD_VERSION, "format": format, "quantize": quantize,
            "class_names": None if class_names is None else list(class_names),
            "input": {"name": INPUT_NAME, "dtype": "float32", "values": INPUT_VALUES,
                      "shape": [None] + list(model.inputs[0].shape[1:])},
            "output": {"name": OUTPUT_NAME, "shape": [None, int(model.outputs[0].shape[-1])]},
            "weights": info.as_dict(), "keras_vggres": __version__}


def serving_function(model):
    """`images -> {"probabilities": model(images)}` as a `tf.function` with a dynamic batch:
    the graph that TFLite and ONNX exports are converted from."""
    import tensorflow as tf

    @tf.function(input_signature=input_signature(model))
    def serve(images):
        return {OUTPUT_NAME: model(images, training=False)}

    return serve


def input_signature(model):
    """`[TensorSpec((None, H, W, 3), float32, name="images")]` for `model`."""
    import tensorflow as tf

    return [tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), tf.float32,
                          name=INPUT_NAME)]
