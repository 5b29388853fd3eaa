"""`export`: a registered model or a fine-tuned run -> .keras / SavedModel / TFLite / ONNX."""

from __future__ import annotations

import argparse
import os

from keras_vggres.cli._args import positive_int, weights_arg


def cmd_export(args):
    import keras_vggres
    from keras_vggres.exporting.api import check_request

    calibration = args.calibration
    if calibration is not None and len(calibration) == 1:
        calibration = calibration[0]
    check_request(args.format, args.out, quantize=args.quantize, calibration=calibration)
    model, class_names, source = _load(args)  # arguments are checked before the slow part
    path = keras_vggres.export(model, args.out, args.format, quantize=args.quantize,
                               calibration=calibration, class_names=class_names)
    quantized = f", {args.quantize}" if args.quantize else ""
    classes = f"{len(class_names)} class names" if class_names else "no class names"
    print(f"{source} -> {path} ({args.format}{quantized}, {classes}; input: raw RGB 0-255)")
    return 0


def _load(args):
    """(model, class names, description) from a run folder / .keras file or a model name."""
    model_options = [f"--{name.replace('_', '-')}" for name in ("weights", "image_size")
                     if name in args]
    if os.path.exists(args.model):
        if model_options:
            raise ValueError(f"{' and '.join(model_options)} apply to a registered model name; "
                             f"received the run or model file {args.model!r}, which has its "
                             "own weights and size.")
        from keras_vggres.transfer.runs import load_run

        run = load_run(args.model, require_class_names=False)
        return run.model, run.class_names, args.model
    if os.sep in args.model or args.model.endswith(".keras"):
        raise FileNotFoundError(f"No run folder or model file at {args.model!r}.")
    import keras_vggres
    from keras_vggres.weights.info import weights_info

    size = getattr(args, "image_size", None)
    model = keras_vggres.get_model(args.model, weights=getattr(args, "weights", "imagenet"),
                                   include_preprocessing=True,
                                   input_shape=None if size is None else (size, size, 3))
    return model, weights_info(model).class_names, args.model


def add_parsers(sub):
    from keras_vggres._checks import EXPORT_FORMATS, QUANTIZATIONS

    p = sub.add_parser("export", help="export a model or a fine-tuned run for deployment "
                                      "(keras, savedmodel, tflite, onnx); input raw RGB 0-255")
    p.add_argument("model", metavar="MODEL|RUN_DIR|MODEL.keras",
                   help="a registered model name (built with its preprocessing inside), a "
                        "finetune run folder or a .keras file written by keras_vggres")
    p.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    p.add_argument("--quantize", choices=[q for q in QUANTIZATIONS if q], default=None,
                   help="tflite only: float16 weights, or int8 (needs --calibration)")
    p.add_argument("--calibration", nargs="+", default=None, metavar="DIR|IMAGE",
                   help="images to calibrate int8 on (folders are searched recursively)")
    p.add_argument("--weights", type=weights_arg, default=argparse.SUPPRESS,
                   help="MODEL only: a tag, a weights file or 'none' (default: imagenet)")
    p.add_argument("--image-size", type=positive_int, default=argparse.SUPPRESS,
                   help="MODEL only: square input size (default: the model's)")
    p.add_argument("--out", required=True,
                   help="output: a .keras / .tflite / .onnx file, or a SavedModel folder")
    p.set_defaults(func=cmd_export)
