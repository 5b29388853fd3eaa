"""argparse types shared by the sub-commands: checked numbers and the `--weights` value."""

from __future__ import annotations

import argparse
import math


def positive_int(text):
    """argparse type: an integer >= 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; received {text!r}")
    return value


def finite_float(text):
    """argparse type: a finite number (no nan / inf)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number; received {text!r}")
    return value


def output_file(text):
    """argparse type: where a file will be written; refused up front if a folder is there."""
    import os

    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"must be a file path, but {text!r} is a folder")
    return text


def output_folder(text):
    """argparse type: a folder to write into; refused up front if a file is there."""
    import os

    if os.path.lexists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"must be a folder, but {text!r} is a file")
    return text


def weights_arg(text):
    """`--weights`: a tag, a weights file path, or 'none' (random)."""
    return None if text.lower() == "none" else text


def optional_number(text):
    """A finite number, or 'none' -> None."""
    return None if text.lower() == "none" else finite_float(text)


def optional_int(text):
    """An integer, or 'none' -> None."""
    return None if text.lower() == "none" else int(text)


def non_negative_int(text):
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0; received {text!r}")
    return value
