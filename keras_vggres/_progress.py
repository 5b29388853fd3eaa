"""One progress bar for long work (downloads, folder scans, embedding passes, predictions).

It draws on a terminal and in Jupyter (an IPython kernel renders carriage returns), and stays
quiet when asked (`verbose=0`, `--quiet`, `KERAS_VGGRES_QUIET=1`) or under CI logs (`CI` set,
or stderr neither a terminal nor a notebook), so logs never fill with redraws. Stdlib only.
"""

from __future__ import annotations

import os
import sys
import time

_TRUE = ("1", "true", "yes")
REDRAW_SECONDS = 0.1


def in_notebook():
    """Whether we run inside an IPython kernel (Jupyter, VS Code notebooks, Colab)."""
    return "ipykernel" in sys.modules


def interactive(stream=None):
    """Whether a progress bar on `stream` (default stdout) would be seen live: a terminal or
    a notebook, not CI logs or a pipe."""
    if os.environ.get("KERAS_VGGRES_QUIET", "").strip().lower() in _TRUE:
        return False
    if os.environ.get("CI", "").strip().lower() in _TRUE:
        return False
    stream = stream or sys.stdout
    return stream is not None and (in_notebook() or (hasattr(stream, "isatty")
                                                      and stream.isatty()))


def resolve_verbose(verbose, stream=None):
    """`verbose` ("auto", 0, 1, 2, True, False, None) -> 0 (silent), 1 (live bar), 2 (one line
    at the end). "auto"/None: a live bar where someone can see it, else silent."""
    if verbose in ("auto", None):
        return 1 if interactive(stream) else 0
    if isinstance(verbose, bool):
        return 1 if verbose else 0
    return int(verbose)


class Progress:
    """`label: done/total unit [pct] rate`, redrawn in place at most ten times a second.

    verbose 1 redraws live; 2 prints one line when closed; 0 prints nothing. `scale` and
    `unit` turn counts into readable units (bytes -> MiB). Written to stdout, like Keras'
    own progress bars, unless `stream` says otherwise (downloads use stderr).
    """

    def __init__(self, label, total=None, *, verbose="auto", unit="", scale=1.0, stream=None):
        self.label, self.total, self.unit, self.scale = label, total, unit, scale
        self.stream = stream or sys.stdout
        self.verbose = resolve_verbose(verbose, self.stream)
        self.done = self.base = 0
        self.t0, self.last = time.monotonic(), 0.0  # the first update always draws
        self.width = 0

    def start(self, done=0, total=None):
        """(Re)start counting from `done` (a resumed download) with a new `total`."""
        self.done = self.base = done
        self.total = total if total is not None else self.total
        self.t0 = time.monotonic()
        self._draw(force=True)

    def update(self, done):
        self.done = done
        self._draw()

    def advance(self, n=1):
        self.update(self.done + n)

    def close(self):
        if self.verbose in (1, 2):
            self._draw(force=True, final=True)
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def line(self):
        now = time.monotonic()
        rate = (self.done - self.base) / self.scale / max(now - self.t0, 1e-3)
        fmt = "{:.1f}" if self.scale != 1 else "{:d}"
        done = fmt.format(self.done / self.scale if self.scale != 1 else int(self.done))
        total = ""
        if self.total:
            total = "/" + fmt.format(self.total / self.scale if self.scale != 1
                                     else int(self.total))
        pct = f" {100 * self.done / self.total:3.0f}%" if self.total else ""
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.label}: {done}{total}{unit}{pct} {rate:.1f}{unit}/s"

    def _draw(self, *, force=False, final=False):
        if self.verbose == 0 or self.stream is None or (self.verbose == 2 and not final):
            return
        now = time.monotonic()
        if not force and now - self.last < REDRAW_SECONDS:
            return
        self.last = now
        text = self.line()
        prefix = "\r" if self.verbose == 1 else ""
        self.stream.write(prefix + text.ljust(self.width))  # pad over a longer previous line
        self.stream.flush()
        self.width = max(self.width, len(text))
