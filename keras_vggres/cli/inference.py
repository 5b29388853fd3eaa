"""`classify` (ImageNet classes) and `predict` (a fine-tuned run's own class names)."""

from __future__ import annotations

import json
import sys

from keras_vggres.cli._args import output_file, positive_int, weights_arg


def cmd_classify(args):
    import keras_vggres
    from keras_vggres.decoding import decode_predictions
    from keras_vggres.images import load_images

    def build():
        model = keras_vggres.get_model(args.model, weights=args.weights,
                                       include_preprocessing=True)
        return keras_vggres.optimize_for_inference(model) if args.optimize else model

    if args.strategy is None:
        model = build()
    else:
        from keras_vggres import distribute

        model = distribute.build_in_scope(args.strategy, build)
    if args.weights is None:
        print("NOTE: weights=None: predictions are random until pretrained weights are loaded.")
    images = load_images(args.images, model=model)  # the weights' own eval transform
    probabilities = model.predict(images, batch_size=args.batch_size, verbose=0)
    for path, row in zip(args.images, decode_predictions(probabilities, top=args.top)):
        print(path)
        for wnid, label, score in row:
            print(f"  {score:7.4f}  {label} ({wnid})")
    return 0


def cmd_predict(args):
    from keras_vggres.transfer.runs import load_run

    run = load_run(args.run)
    paths, probabilities, skipped = run.predict_files(
        args.images, batch_size=args.batch_size,
        verbose=0 if args.quiet or args.out is None and args.format != "table" else "auto")
    for path, reason in skipped:  # unreadable files are reported, the rest predicted
        print(f"skipped {path}: {reason}", file=sys.stderr)
    rows = [(path, run.decode(row, args.top)) for path, row in zip(paths, probabilities)]
    text = _format_predictions(rows, args.format)
    if args.out:
        from keras_vggres._atomic import write_text

        write_text(args.out, text)
        print(f"{len(rows)} predictions -> {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _format_predictions(rows, fmt):
    if fmt == "json":
        return json.dumps([{"path": path, "predictions": [{"class": name, "probability": p}
                                                          for name, p in preds]}
                           for path, preds in rows], indent=1) + "\n"
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "rank", "class", "probability"])
        for path, preds in rows:
            writer.writerows([path, rank, name, f"{p:.6f}"]
                             for rank, (name, p) in enumerate(preds, start=1))
        return buf.getvalue()
    lines = []
    for path, preds in rows:
        lines.append(path)
        lines += [f"  {p:7.4f}  {name}" for name, p in preds]
    return "\n".join(lines) + "\n"


def add_parsers(sub):
    from keras_vggres._checks import STRATEGY_KINDS

    p = sub.add_parser("classify", help="top-k ImageNet classes of image files")
    p.add_argument("images", nargs="+")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--weights", type=weights_arg, default="imagenet",
                   help="a tag, a weights file (.h5, .weights.h5, .keras, .pth), or 'none'")
    p.add_argument("--top", type=positive_int, default=5)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--optimize", action="store_true",
                   help="optimize_for_inference: BatchNorm folded, lean predict (same results)")
    p.add_argument("--strategy", choices=STRATEGY_KINDS, default=None,
                   help="build and predict under a tf.distribute strategy (default: none)")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("predict", help="classify images with a fine-tuned run's class names "
                                       "(unreadable files are skipped and named on stderr)")
    p.add_argument("run", metavar="RUN_DIR|MODEL.keras")
    p.add_argument("images", nargs="+", metavar="IMAGE|FOLDER")
    p.add_argument("--top", type=positive_int, default=1)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--out", type=output_file, default=None,
                   help="write the predictions to this file")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_predict)
