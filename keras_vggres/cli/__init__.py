"""`keras-vggres`: models, weights cache, classification, fine-tuning and more, from a shell.

Sub-commands list models and weights, fill and verify the cache, convert, classify, fine-tune,
extract features, predict with a run's class names, draw Grad-CAM heatmaps, compare models
and export them for deployment.

One module per group of sub-commands (`COMMAND_MODULES`), each with `add_parsers(sub)` and small
`cmd_*` functions. Choice lists come from the Keras-free `keras_vggres._checks`; TensorFlow and
Keras are imported only inside the commands that build models, so `models`, `weights`,
`download`, `verify` and `--help` start in well under a second and print no TensorFlow logs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMAND_MODULES = ("weights", "inference", "transfer", "viz", "compare", "export")


def build_parser():
    from keras_vggres import __version__

    parser = argparse.ArgumentParser(prog="keras-vggres", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"keras-vggres {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"keras_vggres.cli.{name}").add_parsers(sub)
    return parser


def main(argv=None):
    """Entry point of the `keras-vggres` console script."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, RuntimeError, MemoryError, ImportError) as error:
        print(f"keras-vggres {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2


def one_line(error):
    """An error's message on one line (multi-line details joined), for one clear CLI line."""
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return text or type(error).__name__
