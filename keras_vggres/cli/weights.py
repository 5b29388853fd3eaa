"""`models`, `weights`, `download`, `verify`, `convert`: tables and the weights cache.

Light commands: nothing here imports TensorFlow or Keras (the converter reads `.pth` files
with NumPy alone).
"""

from __future__ import annotations

import json
from pathlib import Path

from keras_vggres.cli._args import output_file


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

    print(f"{'model':<12} {'tag':<6} {'source':<12} {'top1':>6} {'top5':>6}  file  [cached? "
          "(by name and size; `keras-vggres verify` checks hashes)]")
    for record in _records(args.model):
        metrics = record.metrics or {}
        for kind, spec in record.files.items():
            cached = "cached" if download.present_path(spec) else "-"
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


def add_parsers(sub):
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
    p.add_argument("--out", type=output_file)
    p.add_argument("--no-top", action="store_true")
    p.set_defaults(func=cmd_convert)
