"""`compare`: VGG vs ResNet side by side (parameters, GMACs, memory, speed, published accuracy)."""

from __future__ import annotations

import sys

from keras_vggres.cli._args import non_negative_int, output_file, positive_int


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def cmd_compare(args):
    from keras_vggres.profiling import format_rows, plot, profile

    plotting = args.plot is not None and _has_matplotlib()
    if args.plot is not None and not plotting:  # said before the long run, and again after it
        print(f"--plot {args.plot}: matplotlib is not installed (pip install "
              "'keras_vggres[plots]'); the table is printed, no plot is written.",
              file=sys.stderr)
    rows = profile(args.models, weights=args.weights, image_size=args.image_size,
                   batch_size=args.batch_size, measure=not args.no_measure, runs=args.runs,
                   warmup=args.warmup)
    print(format_rows(rows, args.format))
    if plotting:
        plot(rows, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    elif args.plot is not None:
        print(f"--plot {args.plot}: not written (matplotlib is not installed).", file=sys.stderr)
    return 0


def add_parsers(sub):
    from keras_vggres._profile_format import FORMATS

    p = sub.add_parser("compare", help="compare models: params, GMACs, memory, speed, top-1")
    p.add_argument("models", nargs="+", metavar="MODEL[:TAG]",
                   help="model names (see `models`); MODEL:TAG reports one weights tag")
    p.add_argument("--weights", default=None,
                   help="tag reported for models without :TAG ('imagenet': the default tag; "
                        "default: every tag)")
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="batch of the throughput and of the activation-memory estimate")
    p.add_argument("--runs", type=positive_int, default=5, help="timed runs per measurement")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed runs before them")
    p.add_argument("--no-measure", action="store_true", help="skip the timings")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--plot", type=output_file, default=None, metavar="OUT.png",
                   help="also draw published top-1 vs GMACs (needs matplotlib)")
    p.set_defaults(func=cmd_compare)
