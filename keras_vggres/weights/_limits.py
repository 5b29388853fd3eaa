"""How much and how slowly a download may go: the size bound of a file and the minimum rate.

Size bound (bytes a download may write; the transfer stops and fails as soon as it would
exceed it, with or without a Content-Length, for mirror copies too):

1. the exact ``size`` of the spec when known;
2. else torchvision's published ``size_mib`` + ``SIZE_MIB_MARGIN_MIB`` (it is rounded);
3. else ``DEFAULT_MAX_DOWNLOAD_MIB``, overridable with ``KERAS_VGGRES_MAX_DOWNLOAD_MIB``.

Minimum rate (a slow-drip server resets a socket timeout with every byte, so a timeout alone
never ends it): after each window of ``KERAS_VGGRES_RATE_WINDOW`` seconds (default
``RATE_WINDOW_S``; the first window is the grace period) the bytes received in that window must
average at least ``KERAS_VGGRES_MIN_RATE`` bytes/s (default ``MIN_RATE``), or the download fails
as too slow (not retried). ``KERAS_VGGRES_MIN_RATE=0`` turns the check off.

Environment variables are read at call time. Stdlib only.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

MIB = 1024 * 1024
DEFAULT_MAX_DOWNLOAD_MIB = 1024  # largest known file (VGG19 with top) is 548 MiB
SIZE_MIB_MARGIN_MIB = 1.0
MIN_RATE = 16 * 1024  # bytes/s: 10 h for the largest file, far slower than any real mirror
RATE_WINDOW_S = 60.0
MAX_MIB_ENV = "KERAS_VGGRES_MAX_DOWNLOAD_MIB"
MIN_RATE_ENV = "KERAS_VGGRES_MIN_RATE"
RATE_WINDOW_ENV = "KERAS_VGGRES_RATE_WINDOW"


class SizeBound(NamedTuple):
    """At most ``limit`` bytes may be written; ``rule`` says where the number comes from."""

    limit: int
    rule: str


class RateRule(NamedTuple):
    """At least ``min_rate`` bytes/s on average over every ``window`` seconds (0: no check)."""

    min_rate: float
    window: float


def size_bound(spec) -> SizeBound:
    """The most bytes a download of ``spec`` (a FileSpec) may write, and the rule that says so."""
    if spec.size is not None:
        return SizeBound(spec.size, f"the manifest size of {spec.name}")
    size_mib = getattr(spec, "size_mib", None)
    if size_mib is not None:
        return SizeBound(math.ceil((size_mib + SIZE_MIB_MARGIN_MIB) * MIB),
                         f"the published size of {spec.name} ({size_mib} MiB) + "
                         f"{SIZE_MIB_MARGIN_MIB:g} MiB")
    ceiling = _env_number(MAX_MIB_ENV, DEFAULT_MAX_DOWNLOAD_MIB, zero_ok=False)
    return SizeBound(math.ceil(ceiling * MIB),
                     f"the ceiling for files of unknown size ({MAX_MIB_ENV}={ceiling:g} MiB)")


def rate_rule() -> RateRule:
    """The minimum average rate and its window, from the environment or the defaults."""
    return RateRule(_env_number(MIN_RATE_ENV, MIN_RATE, zero_ok=True),
                    _env_number(RATE_WINDOW_ENV, RATE_WINDOW_S, zero_ok=False))


def _env_number(name: str, default: float, *, zero_ok: bool) -> float:
    """A positive (or, with ``zero_ok``, non-negative) number from ``name``; default when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value >= 0 if zero_ok else value > 0) or math.isinf(value):
        accepted = "a number >= 0" if zero_ok else "a positive number"
        raise ValueError(f"{name} must be {accepted}; received {name}={raw!r}.")
    return value
