"""Exports for deployment: `.keras`, TensorFlow SavedModel, TFLite (LiteRT) and ONNX.

Re-exports only: `export` (the one entry point, in `api`), the format table and the JSON
record's names. One module per format (`keras_file`, `savedmodel`, `tflite`, `onnx`), plus
`record` (what every export carries) and `calibration` (int8 calibration data).
"""

from keras_vggres.exporting.api import EXTRAS, FORMATS, QUANTIZE_FOR, export
from keras_vggres.exporting.record import INPUT_NAME, OUTPUT_NAME, RECORD_NAME

__all__ = ["export", "FORMATS", "QUANTIZE_FOR", "EXTRAS", "RECORD_NAME", "INPUT_NAME",
           "OUTPUT_NAME"]
