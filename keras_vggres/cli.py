"""`keras-vggres`: list models and weights, fill the cache, convert, classify, fine-tune, extract,
predict with a run's class names.

Each sub-command is a small function taking the parsed arguments. Choice lists come from the
Keras-free `keras_vggres._checks`; TensorFlow and Keras are imported only inside the commands
that build models, so `models`, `weights`, `download`, `verify` and `--help` start in well
under a second and print no TensorFlow log lines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path


# --------------------------------------------------------------------------- models / weights
def cmd_models(args):
    from keras_vggres.registry import list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=1, default=list))
        return 0
    print(f"{'model':<12} {'family':<10} {'size':>4} {'params':>12}  {'default':<8} weights")
    for row in rows:
        print(f"{row['name']:<12} {row['family']:<10} {row['default_size']:>4} "
              f"{row['params']:>12,}  {row['default_weights']:<8} {', '.join(row['weights'])}")
    return 0


def _records(model=None):
    from keras_vggres.registry import MODELS
    from keras_vggres.weights import manifest

    names = [model.lower()] if model else list(manifest.load_manifest())
    if model and model.lower() not in manifest.load_manifest():
        raise ValueError(f"Unknown model {model!r}; known: {tuple(MODELS)}.")
    for name in names:
        for tag in manifest.list_weights(name):
            yield manifest.get_weights(name, tag)


def cmd_weights(args):
    from keras_vggres.weights import download

    print(f"{'model':<12} {'tag':<6} {'source':<12} {'top1':>6} {'top5':>6}  file  [cached?]")
    for record in _records(args.model):
        metrics = record.metrics or {}
        for kind, spec in record.files.items():
            cached = "cached" if download.cached_path(spec) else "-"
            print(f"{record.model:<12} {record.tag:<6} {record.source:<12} "
                  f"{metrics.get('top1', ''):>6} {metrics.get('top5', ''):>6}  {kind}: "
                  f"{spec.name}  [{cached}]")
    return 0


def cmd_download(args):
    from keras_vggres.weights import download, manifest

    if args.all:
        specs = [(r, spec) for r in _records(args.model) for spec in r.files.values()]
    elif args.model:
        record = manifest.get_weights(args.model.lower(), args.tag)
        specs = [(record, manifest.file_for(record, args.include_top))]
    else:
        raise ValueError("`download` needs a MODEL, or --all (optionally with a MODEL).")
    for record, spec in specs:
        print(f"{record.model} {record.tag}: {download.fetch(spec, quiet=args.quiet)}")
    return 0


def cmd_verify(args):
    from keras_vggres.weights import cache, download

    folder = download.cache_dir()
    results = cache.verify_cache(folder, delete=args.delete)  # a missing folder raises
    for result in results:
        print(result.line())
    bad = [r for r in results if not r.ok]
    left = [r for r in bad if not r.deleted]
    print(f"{len(results)} file(s) checked in {folder}: {len(bad)} bad"
          + (f", {len(bad) - len(left)} deleted" if args.delete else ""))
    return 1 if left else 0


def cmd_convert(args):
    from keras_vggres.weights import convert

    out = Path(args.out or Path(args.file).with_suffix(".h5"))
    convert.convert_pth_file(args.file, args.model.lower(), out, include_top=not args.no_top)
    print(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------- inference
def _positive_int(text):
    """argparse type: an integer >= 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; received {text!r}")
    return value


def _finite_float(text):
    """argparse type: a finite number (no nan / inf)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number; received {text!r}")
    return value


def _weights(text):
    """`--weights`: a tag, a weights file path, or 'none' (random)."""
    return None if text.lower() == "none" else text


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
    from keras_vggres.transfer.runs import image_paths, load_run

    run = load_run(args.run)
    paths = image_paths(args.images)
    probabilities = run.predict_proba(paths, batch_size=args.batch_size,
                                      verbose=0 if args.quiet or args.out is None and
                                      args.format != "table" else "auto")
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


# --------------------------------------------------------------------------- transfer learning
def cmd_finetune(args):
    from keras_vggres.transfer.finetune import finetune

    result = finetune(
        args.data_dir, model=args.model, weights=args.weights, image_size=args.image_size,
        batch_size=args.batch_size,
        epochs_head=args.epochs if args.epochs_head is None else args.epochs_head,
        epochs_finetune=args.epochs if args.epochs_finetune is None else args.epochs_finetune,
        unfreeze=args.unfreeze, bn=args.bn, lr=args.lr,
        finetune_lr=args.finetune_lr, warmup_epochs=args.warmup_epochs, dropout=args.dropout,
        augment=args.augment, validation_split=args.validation_split, seed=args.seed,
        out_dir=args.out, early_stopping_patience=args.patience, strategy=args.strategy,
        precision=args.precision, jit_compile=True if args.jit else "auto",
        verbose=0 if args.quiet else "auto", optimizer=args.optimizer,
        label_smoothing=args.label_smoothing, class_weights=args.class_weights,
        cache=args.cache, restart=args.restart)
    if args.quiet:  # finetune prints the hygiene report and the result unless verbose=0
        print(result)
    return 0


def cmd_extract(args):
    from keras_vggres.transfer.extract import extract_features

    source = args.source[0] if len(args.source) == 1 and os.path.isdir(args.source[0]) \
        else args.source
    features, paths, _, class_names = extract_features(
        source, model=args.model, weights=args.weights, image_size=args.image_size,
        pooling=args.pooling, batch_size=args.batch_size, out=args.out, strategy=args.strategy,
        verbose=0 if args.quiet else "auto")
    print(f"{features.shape[0]} embeddings of size {features.shape[1]} from {args.model} "
          f"(weights={args.weights}, {len(class_names)} classes) -> {args.out}")
    return 0


def _validation_split(text):
    return None if text.lower() == "none" else _finite_float(text)


def _patience(text):
    return None if text.lower() == "none" else int(text)


def _add_transfer_parsers(sub):
    from keras_vggres._checks import (AUGMENTATIONS, BN_POLICIES, OPTIMIZERS, PRECISIONS,
                                      STRATEGY_KINDS)

    p = sub.add_parser("finetune", help="fine-tune a model on an image folder and export it")
    p.add_argument("data_dir", help="root/<class>/*.jpg, or root/train/... + root/val/... "
                   "(+ root/test/..., evaluated once at the end)")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--weights", type=_weights, default="imagenet",
                   help="a tag, a weights file (.h5, .weights.h5, .keras, .pth), or 'none'")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=5,
                   help="epochs of each phase (head, then fine-tuning) unless "
                        "--epochs-head / --epochs-finetune say otherwise")
    p.add_argument("--epochs-head", type=int, default=None)
    p.add_argument("--epochs-finetune", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32, help="per replica")
    p.add_argument("--out", default=None, help="run folder (the same one resumes a run)")
    p.add_argument("--restart", action="store_true",
                   help="start the run in --out over (after the settings or data changed)")
    p.add_argument("--unfreeze", default=None, help="first stage to fine-tune, or 'all'")
    p.add_argument("--bn", choices=BN_POLICIES, default="frozen",
                   help="BatchNorm of the unfrozen stages: frozen (inference mode) or train")
    p.add_argument("--lr", type=_finite_float, default=1e-3, help="head learning rate")
    p.add_argument("--finetune-lr", type=_finite_float, default=None,
                   help="peak fine-tuning learning rate (default lr / 10)")
    p.add_argument("--warmup-epochs", type=_finite_float, default=1.0)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    p.add_argument("--label-smoothing", type=_finite_float, default=0.0)
    p.add_argument("--no-class-weights", dest="class_weights", action="store_false",
                   help="do not weight classes by inverse frequency")
    p.add_argument("--dropout", type=_finite_float, default=0.2)
    p.add_argument("--augment", nargs="?", const="basic", default=False,
                   choices=[a for a in AUGMENTATIONS if a],
                   help="training augmentation (bare --augment: basic)")
    p.add_argument("--cache", choices=("memory", "disk"), default=None,
                   help="cache decoded images (default: stream from disk)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--patience", type=_patience, default=3,
                   help="early-stopping patience in epochs, or 'none'")
    p.add_argument("--validation-split", type=_validation_split, default=0.2,
                   help="held-out fraction, or 'none'")
    p.add_argument("--strategy", choices=STRATEGY_KINDS, default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="float32")
    p.add_argument("--jit", action="store_true", help="force XLA (jit_compile=True)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, only the result")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("extract", help="pooled embeddings of images -> a .npz file")
    p.add_argument("source", nargs="+", metavar="DATA_DIR|IMAGES",
                   help="a folder (class sub-folders or images) or image files")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--weights", type=_weights, default="imagenet",
                   help="a tag, a weights file (.h5, .weights.h5, .keras, .pth), or 'none'")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--pooling", choices=("avg", "max"), default="avg")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--out", default="feats.npz")
    p.add_argument("--strategy", choices=STRATEGY_KINDS, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("predict", help="classify images with a fine-tuned run's class names")
    p.add_argument("run", metavar="RUN_DIR|MODEL.keras")
    p.add_argument("images", nargs="+", metavar="IMAGE|FOLDER")
    p.add_argument("--top", type=_positive_int, default=1)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--out", default=None, help="write the predictions to this file")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_predict)


# --------------------------------------------------------------------------- parser
def build_parser():
    from keras_vggres import __version__
    from keras_vggres._checks import STRATEGY_KINDS

    parser = argparse.ArgumentParser(prog="keras-vggres", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"keras-vggres {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("weights", help="list weight tags, sources, metrics, cache state")
    p.add_argument("model", nargs="?")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("download", help="fill the cache (e.g. for an air-gapped machine)")
    p.add_argument("model", nargs="?")
    p.add_argument("--tag", default="imagenet")
    top = p.add_mutually_exclusive_group()
    top.add_argument("--include-top", dest="include_top", action="store_true", default=True)
    top.add_argument("--no-top", dest="include_top", action="store_false")
    p.add_argument("--all", action="store_true", help="every file of every model and tag")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("verify", help="hash-check every cached weight file")
    p.add_argument("--delete", action="store_true", help="delete files that fail")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("convert", help="convert a torchvision .pth to a Keras HDF5 weight file")
    p.add_argument("file")
    p.add_argument("--model", required=True)
    p.add_argument("--out")
    p.add_argument("--no-top", action="store_true")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("classify", help="top-k ImageNet classes of image files")
    p.add_argument("images", nargs="+")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--weights", type=_weights, default="imagenet",
                   help="a tag, a weights file (.h5, .weights.h5, .keras, .pth), or 'none'")
    p.add_argument("--top", type=_positive_int, default=5)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--optimize", action="store_true",
                   help="optimize_for_inference: BatchNorm folded, lean predict (same results)")
    p.add_argument("--strategy", choices=STRATEGY_KINDS, default=None,
                   help="build and predict under a tf.distribute strategy (default: none)")
    p.set_defaults(func=cmd_classify)

    _add_transfer_parsers(sub)
    return parser


def main(argv=None):
    """Entry point of the `keras-vggres` console script."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, OSError, RuntimeError) as error:
        print(f"keras-vggres {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
