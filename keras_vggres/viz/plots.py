"""The charts of a fine-tuning report as matplotlib figures, and PNG files of them.

`confusion_figure` and `curves_figure` return `matplotlib.figure.Figure` objects made without
pyplot (no global state, no backend switch, no second copy displayed in a notebook);
`save_figure` renders one with the Agg canvas and writes an RGB PNG atomically.
`save_confusion_png` / `save_curves_png` (what `finetune` calls) fall back to plain Pillow
drawings, with a warning, when matplotlib is not installed: a run never fails for want of it.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np

from keras_vggres._atomic import write_bytes

TRAIN_STYLE = {"linestyle": "-", "marker": "o", "color": "#1f54a0"}
VAL_STYLE = {"linestyle": "--", "marker": "s", "color": "#d66020"}
PANELS = (("loss", "val_loss", "Loss"), ("accuracy", "val_accuracy", "Accuracy"))
MAX_ANNOTATED_CLASSES = 30  # beyond this, cells are too small for their counts
INSTALL_HINT = "pip install matplotlib (or the keras_vggres[plots] extra)"


def _figure_class(what):
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(f"{what} needs matplotlib: {INSTALL_HINT}.") from err
    return Figure


def has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- figures
def confusion_figure(cm, class_names, *, title="Confusion matrix"):
    """A confusion matrix: rows true, columns predicted, colour = share of the true class,
    counts (and shares) in the cells, class names on both axes.

    Args:
        cm: (classes, classes) counts, e.g. `transfer.report.confusion_matrix(...)`.
        class_names: one name per row/column.
        title: the figure's title (accuracy and the number of images are added).
    """
    cm = np.asarray(cm)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"`cm` must be ({n}, {n}) for {n} class names; received shape "
                         f"{cm.shape}.")
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    longest = max((len(str(name)) for name in class_names), default=1)
    side = min(max(3.5, 0.6 * n), 16)
    fig = _figure_class("confusion_figure")(
        figsize=(side + 1.6 + 0.07 * longest, side + 1.0 + 0.07 * longest),
        layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    ticks = np.arange(n)
    if longest > 4:  # long names would overlap side by side
        ax.set_xticks(ticks, labels=class_names, rotation=45, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticks(ticks, labels=class_names)
    ax.set_yticks(ticks, labels=class_names)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    total = int(cm.sum())
    accuracy = np.trace(cm) / total if total else 0.0
    ax.set_title(f"{title}\n{total} images, accuracy {accuracy:.1%}")
    if n <= MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                text = f"{int(cm[i, j])}" + (f"\n{shares[i, j]:.0%}" if n <= 12 else "")
                ax.text(j, i, text, ha="center", va="center", fontsize=9 if n <= 12 else 7,
                        color="white" if shares[i, j] > 0.5 else "black")
    return fig


def curves_figure(rows, *, title="Training curves"):
    """Loss and accuracy per epoch: train solid, validation dashed; shaded bands name the
    training phases (e.g. `head`, `finetune`), so a jump at a phase change reads as one.

    Args:
        rows: metric rows as `transfer.report.read_metrics` returns them: dicts with "epoch",
            "phase" and any of "loss", "val_loss", "accuracy", "val_accuracy" (None = absent).
        title: the figure's title.
    """
    Figure = _figure_class("curves_figure")
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4), layout="constrained")
    fig.suptitle(title)
    for index, (train_key, val_key, label) in enumerate(PANELS, start=1):
        ax = fig.add_subplot(1, len(PANELS), index)
        _phase_bands(ax, rows)
        for key, style, name in ((train_key, TRAIN_STYLE, "train"),
                                 (val_key, VAL_STYLE, "validation")):
            points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), label=name, markersize=4, **style)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label.lower())
        ax.set_title(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best")
        else:
            ax.text(0.5, 0.5, "no values recorded", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
    return fig


def _phase_bands(ax, rows):
    """Alternate shading per phase, its name at the top, a dotted line where a phase starts."""
    segments = []
    for row in rows:
        if segments and segments[-1][0] == row.get("phase"):
            segments[-1][2] = row["epoch"]
        else:
            segments.append([row.get("phase"), row["epoch"], row["epoch"]])
    for k, (phase, first, last) in enumerate(segments):
        ax.axvspan(first - 0.5, last + 0.5, color="0.5" if k % 2 else "0.8", alpha=0.15, lw=0)
        if k:
            ax.axvline(first - 0.5, color="0.4", linestyle=":", lw=1)
        ax.text((first + last) / 2, 0.98, str(phase), transform=ax.get_xaxis_transform(),
                ha="center", va="top", fontsize=8, color="0.3")


# ----------------------------------------------------------------------------- files
def save_figure(fig, path, *, dpi=100):
    """Render `fig` with matplotlib's Agg renderer (whatever pyplot's backend is) and write it
    as an RGB PNG, atomically; returns `path`."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    buffer.seek(0)
    with Image.open(buffer) as image:
        return _write_png(image.convert("RGB"), path)


def save_confusion_png(cm, class_names, path, *, title="Confusion matrix"):
    """`confusion_figure` as a PNG; the plain Pillow chart without matplotlib (warns)."""
    if has_matplotlib():
        return save_figure(confusion_figure(cm, class_names, title=title), path)
    from keras_vggres.viz._pillow_charts import confusion_image

    _warn_fallback(path)
    return _write_png(confusion_image(np.asarray(cm), class_names, title=title), path)


def save_curves_png(rows, path):
    """`curves_figure` as a PNG; the plain Pillow chart without matplotlib (warns)."""
    if has_matplotlib():
        return save_figure(curves_figure(rows), path)
    from keras_vggres.viz._pillow_charts import curves_image

    _warn_fallback(path)
    return _write_png(curves_image(rows), path)


def _warn_fallback(path):
    warnings.warn(f"matplotlib is not installed: {os.fspath(path)!r} is a plain Pillow chart; "
                  f"{INSTALL_HINT} for the full one.", stacklevel=3)


def _write_png(image, path):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return write_bytes(path, buffer.getvalue())
