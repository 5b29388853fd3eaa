"""Run reports: metrics CSV (one row per epoch, resume-safe), JSON files, confusion matrix, PNGs.

PNGs are drawn with Pillow's ImageDraw, so reports need no plotting library. Every file is
written to a temporary name and renamed into place: a killed run never leaves half a report.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time

import keras
import numpy as np

from keras_vggres._atomic import replacing

METRIC_COLUMNS = ("run", "phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy",
                  "learning_rate", "seconds")


# ----------------------------------------------------------------------------- files
def write_text(path, text):
    """Write `text` to `path` atomically (temporary file + rename)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return path


def write_json(path, obj):
    """Write `obj` as indented JSON, atomically; NumPy scalars and arrays are converted."""
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serialisable.")


# ----------------------------------------------------------------------------- metrics CSV
def read_metrics(path):
    """Rows of a metrics CSV as dicts (numbers as float/int, empty cells as None)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text):
    if text in (None, ""):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class EpochCSVLogger(keras.callbacks.Callback):
    """Append one row per finished epoch to a CSV with fixed columns (`METRIC_COLUMNS`).

    `learning_rate` is the rate at the epoch's first step. Unlike `keras.callbacks.CSVLogger`,
    the columns are the same in every phase, and rows of
    the same phase from epoch `e` on are replaced when epoch `e` is run again (after a resume),
    so the file never holds duplicates. `epoch` is 1-based and continues across phases
    (`epoch_offset`); `run` counts the attempts (restarts) of the same run.
    """

    def __init__(self, path, *, phase, run, epoch_offset=0):
        super().__init__()
        self.path, self.phase, self.run, self.epoch_offset = os.fspath(path), phase, run, \
            epoch_offset
        self._start, self._lr = None, None

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._lr = time.perf_counter(), current_learning_rate(self.model)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        number = self.epoch_offset + epoch + 1
        row = {"run": self.run, "phase": self.phase, "epoch": number,
               "learning_rate": self._lr,
               "seconds": round(time.perf_counter() - (self._start or time.perf_counter()), 3)}
        row.update({k: float(logs[k]) for k in METRIC_COLUMNS if k in logs and k not in row})
        rows = [r for r in read_metrics(self.path)
                if not (r["phase"] == self.phase and r["epoch"] >= number)]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows + [row])
        write_text(self.path, buf.getvalue())


def current_learning_rate(model):
    """The optimizer's learning rate now (schedules evaluated at the current step), or None."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    value = optimizer.learning_rate  # a variable, or a tensor for a schedule
    return float(value.numpy() if hasattr(value, "numpy") else value)


# ----------------------------------------------------------------------------- evaluation
def confusion_matrix(y_true, y_pred, num_classes):
    """Counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def per_class_metrics(cm, class_names):
    """{class: {precision, recall, f1, support}} from a confusion matrix."""
    out = {}
    for i, name in enumerate(class_names):
        tp, support, predicted = cm[i, i], cm[i].sum(), cm[:, i].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": round(float(precision), 4), "recall": round(float(recall), 4),
                     "f1": round(float(f1), 4), "support": int(support)}
    return out


# ----------------------------------------------------------------------------- PNGs
def _canvas(width, height):
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), "white")
    return img, ImageDraw.Draw(img), ImageFont.load_default()


def _save_png(img, path):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path = os.fspath(path)
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(buf.getvalue())
    return path


def save_confusion_png(cm, class_names, path, *, title="Confusion matrix"):
    """Draw `cm` (rows true, columns predicted; colour = row share) with counts in the cells."""
    n = len(class_names)
    cell = max(28, min(60, 480 // max(n, 1)))
    labels = [f"{i}: {name[:18]}" for i, name in enumerate(class_names)]
    left, top = 16 + 7 * max(len(s) for s in labels), 56
    img, draw, font = _canvas(left + n * cell + 20, top + n * cell + 40)
    draw.text((10, 8), f"{title} (rows: true, columns: predicted)", fill="black", font=font)
    totals = np.maximum(cm.sum(axis=1, keepdims=True), 1)
    for i in range(n):
        draw.text((8, top + i * cell + cell // 2 - 5), labels[i], fill="black", font=font)
        draw.text((left + i * cell + cell // 2 - 4, top - 16), str(i), fill="black", font=font)
        for j in range(n):
            share = cm[i, j] / totals[i, 0]
            colour = tuple(int(255 - share * (255 - c)) for c in (31, 84, 160))
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell, top + (i + 1) * cell)
            draw.rectangle(box, fill=colour, outline="gray")
            draw.text((box[0] + 4, box[1] + cell // 2 - 5), str(int(cm[i, j])),
                      fill="white" if share > 0.5 else "black", font=font)
    return _save_png(img, path)


def save_curves_png(rows, path):
    """Loss and accuracy per epoch (train solid, validation dashed); grey lines and labels
    mark where each phase starts."""
    panels = (("loss", "val_loss"), ("accuracy", "val_accuracy"))
    width, height, pad = 420, 280, 44
    img, draw, font = _canvas(width * len(panels), height)
    epochs = [r["epoch"] for r in rows]
    starts = [(r["epoch"], r["phase"]) for i, r in enumerate(rows)
              if i == 0 or r["phase"] != rows[i - 1]["phase"]]
    for k, keys in enumerate(panels):
        x0, box = k * width, (k * width + pad, 24, (k + 1) * width - 14, height - pad)
        draw.rectangle(box, outline="black")
        draw.text((x0 + pad, 6), keys[0], fill="black", font=font)
        values = [r[key] for r in rows for key in keys if r.get(key) is not None]
        if not epochs or not values:
            continue
        lo, hi = min(values), max(values)
        hi = hi if hi > lo else lo + 1.0
        e_lo, e_hi = min(epochs), max(max(epochs), min(epochs) + 1)

        def xy(epoch, value, box=box, lo=lo, hi=hi, e_lo=e_lo, e_hi=e_hi):
            return (box[0] + (epoch - e_lo) / (e_hi - e_lo) * (box[2] - box[0]),
                    box[3] - (value - lo) / (hi - lo) * (box[3] - box[1]))

        for i, (start, phase) in enumerate(starts):
            x = xy(start - 0.5, lo)[0] if i else box[0]
            if i:
                draw.line((x, box[1], x, box[3]), fill=(170, 170, 170))
            draw.text((x + 4, box[1] + 2), str(phase), fill=(120, 120, 120), font=font)
        for key, colour, dashed in ((keys[0], (31, 84, 160), False),
                                    (keys[1], (214, 96, 32), True)):
            points = [xy(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
            _polyline(draw, points, colour, dashed)
        draw.text((x0 + 4, box[1]), f"{hi:.3g}", fill="black", font=font)
        draw.text((x0 + 4, box[3] - 10), f"{lo:.3g}", fill="black", font=font)
        draw.text((box[0], box[3] + 4), f"epoch {e_lo}", fill="black", font=font)
        draw.text((box[2] - 50, box[3] + 4), f"epoch {max(epochs)}", fill="black", font=font)
        draw.text((box[0], box[3] + 20), "train (solid)   validation (dashed)", fill="black",
                  font=font)
    return _save_png(img, path)


def _polyline(draw, points, colour, dashed):
    for p in points:
        draw.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=colour)
    for a, b in zip(points, points[1:]):
        if not dashed:
            draw.line((a, b), fill=colour, width=2)
            continue
        steps = 12
        for s in range(0, steps, 2):
            t0, t1 = s / steps, (s + 1) / steps
            draw.line(((a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0),
                       (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)),
                      fill=colour, width=2)
