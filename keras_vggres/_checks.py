"""Argument checks shared by every public function, and the choice lists they check against.

Keras-free (the CLI imports the lists without starting TensorFlow). Every message names the
argument, the value received and what is accepted, and is built from the constant that the
check uses, so the text shown to a user can never disagree with the code.
"""

from __future__ import annotations

import math
import numbers

# Choice lists used by more than one module (and by the CLI's parser).
POOLING = (None, "avg", "max")
STRATEGY_KINDS = ("auto", "tpu", "multiworker", "mirrored", "none")
PRECISIONS = ("float32", "mixed", "mixed_float16", "mixed_bfloat16")
JIT_CHOICES = ("auto", True, False)
BN_POLICIES = ("frozen", "train")
VERBOSITY = ("auto", 0, 1, 2)
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
AUGMENTATIONS = (False, None, "flip", "basic", "random_resized_crop")
EXPORT_FORMATS = ("keras", "savedmodel", "tflite", "onnx")
QUANTIZATIONS = (None, "float16", "int8")


def _is_member(value, choices):
    """`value in choices` without Python's True == 1 and 0 == False coincidences."""
    for choice in choices:
        if isinstance(value, bool) != isinstance(choice, bool):
            continue
        try:
            if value is choice or (type(value) is type(choice) and value == choice):
                return True
        except (TypeError, ValueError):  # e.g. an array compared with a string
            continue
    return False


def check_choice(arg, value, choices):
    """Raise a ValueError naming `arg`, the value received and the accepted `choices`."""
    if not _is_member(value, choices):
        raise ValueError(f"`{arg}` must be one of {tuple(choices)}; received {arg}={value!r}.")
    return value


def check_bool(arg, value):
    """`value` must be True or False (not 0/1, not None)."""
    if not isinstance(value, bool):
        raise TypeError(f"`{arg}` must be True or False; received {arg}={value!r}.")
    return value


def is_int(value):
    """An integer that is not a bool (NumPy integers included)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(arg, value, *, low=None, high=None):
    """`value` must be an integer in [low, high]; returns it as a Python int."""
    ok = is_int(value) and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        raise ValueError(f"`{arg}` must be an integer{_bounds(low, high, False, False)}; "
                         f"received {arg}={value!r}.")
    return int(value)


def check_number(arg, value, *, low=None, high=None, low_open=False, high_open=False):
    """`value` must be a finite real number within the bounds; returns it as a float.

    NaN and infinities are always refused: a learning rate of `inf` trains to NaN.
    """
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"`{arg}` must be a finite number"
                         f"{_bounds(low, high, low_open, high_open)}; received {arg}={value!r}.")
    return float(value)


def check_optional(check, arg, value, **bounds):
    """`check(arg, value, **bounds)` unless `value` is None."""
    return None if value is None else check(arg, value, **bounds)


def _bounds(low, high, low_open, high_open):
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return (" " + " and ".join(parts)) if parts else ""
