"""format="onnx": an ONNX model from tf2onnx, the record and class names in `metadata_props`.

tf2onnx (the TensorFlow -> ONNX converter that Keras' own `model.export(format="onnx")` calls
on this backend) converts the serving function `images -> {"probabilities": ...}` with a
dynamic batch, so the graph's input is `images` and its output `probabilities`. Metadata:
`class_names` (a JSON list; absent without class names) and `keras_vggres` (the JSON record),
which `onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map` returns.
"""

from __future__ import annotations

import json

from keras_vggres._atomic import replacing
from keras_vggres.exporting.record import RECORD_NAME, serving_function

OPSET = 17  # ONNX opset: ONNX Runtime >= 1.14, TensorRT >= 8.6 and OpenVINO run it


def write(model, path, *, record, quantize=None, calibration=None):
    """Convert `model`, attach the metadata, write `path` atomically."""
    import onnx
    import tf2onnx

    serve = serving_function(model)
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature,
                                             opset=OPSET)
    metadata = {RECORD_NAME: json.dumps(record)}
    if record["class_names"] is not None:
        metadata["class_names"] = json.dumps(record["class_names"])
    onnx.helper.set_model_props(proto, metadata)
    with replacing(path, suffix=".onnx", fsync=True) as tmp:
        onnx.save(proto, tmp)
