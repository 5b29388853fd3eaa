"""Run reports: metrics CSV (one row per epoch, resume-safe), JSON files, confusion matrix, PNGs.

The charts (`save_confusion_png`, `save_curves_png`) are `keras_vggres.viz.plots`' matplotlib
figures, or plain Pillow drawings when matplotlib is missing: a run never fails for want of a
plotting library. Every file is written to a temporary name and renamed into place: a killed
run never leaves half a report.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time

import keras
import numpy as np

from keras_vggres._atomic import write_text  # noqa: F401 (re-exported: the one writer)
from keras_vggres.viz.plots import save_confusion_png, save_curves_png  # noqa: F401 (API)

METRIC_COLUMNS = ("run", "phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy",
                  "learning_rate", "seconds")


# ----------------------------------------------------------------------------- files
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
