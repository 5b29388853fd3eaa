"""format="tflite": a LiteRT flatbuffer from TensorFlow's converter, the record in its metadata.

The model goes through Keras' `ExportArchive` to a temporary SavedModel (endpoint `serve`:
`images` -> `probabilities`) and `tf.lite.TFLiteConverter.from_saved_model`, the path Keras'
own `model.export(format="litert")` takes, restricted to LiteRT's builtin operators (no Flex
ops that the plain `ai_edge_litert` runtime lacks: an unsupported op fails the export instead).
The JSON record (class names, input contract, weights record) is a model metadata entry named
`keras_vggres`, the flatbuffer's own key/value store, readable with the runtime's schema and no
inference (see README).
"""

from __future__ import annotations

import json
import tempfile

from keras_vggres._atomic import replacing
from keras_vggres.exporting.calibration import representative_dataset
from keras_vggres.exporting.record import OUTPUT_NAME, RECORD_NAME, input_signature

SIGNATURE = "serve"


def write(model, path, *, record, quantize=None, calibration=None):
    """Convert `model` (quantized as asked), add the record, write `path` atomically."""
    flatbuffer = convert(model, quantize=quantize, calibration=calibration)
    flatbuffer = with_metadata(flatbuffer, RECORD_NAME, json.dumps(record).encode("utf-8"))
    with replacing(path, suffix=".tflite", fsync=True) as tmp:
        with open(tmp, "xb") as f:
            f.write(flatbuffer)


def convert(model, *, quantize=None, calibration=None):
    """The `.tflite` bytes of `model`: float32, float16 weights, or full-integer int8
    (weights and activations; float32 input and output) calibrated on `calibration`."""
    import tensorflow as tf
    from keras.export import ExportArchive

    samples = representative_dataset(model, calibration) if quantize == "int8" else None
    archive = ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, lambda images: {OUTPUT_NAME: model(images, training=False)},
                         input_signature(model))
    with tempfile.TemporaryDirectory(prefix="keras_vggres_tflite_") as folder:
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = samples
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        return converter.convert()


def with_metadata(flatbuffer, name, data):
    """`flatbuffer` with a model metadata entry `name` holding `data` (bytes), replacing an
    entry of that name; the same mechanism the converter uses for its own entries."""
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in model.metadata or () if _text(m.name) != name] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value
