"""The end of a fine-tuning run: evaluate the best model, export it, write the summary.

Outputs in the run folder: `model.keras` (the best epoch's weights, not compiled, with the run's
class names and weights record inside: it loads with plain `keras.models.load_model`, and with
`keras_vggres.transfer.load_run` for predictions with class names), `saved_model/` (TensorFlow
SavedModel: endpoint `serve` -> probabilities, `classify` -> probabilities + class names), both
taking raw RGB 0-255 images; `run.json` (class names, weights record, image size: what
`load_run` reads), `best.keras` (with optimizer state, to continue training), `metrics.csv`,
`summary.json`, `confusion_matrix.png`, `curves.png`, `hygiene.txt`/`.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field

import keras
import numpy as np

from keras_vggres._atomic import remove_leftovers, write_text
from keras_vggres.saving import export_saved_model, save_model
from keras_vggres.transfer import report as reporting
from keras_vggres.transfer.callbacks import best_so_far
from keras_vggres.transfer.settings import weights_argument
from keras_vggres.transfer.layout import (BACKUP_DIR, BEST_MODEL, CACHE_DIR, CONFUSION_PNG,
                                          CURVES_PNG, EMBEDDINGS_DIR, HYGIENE_TXT, METRICS,
                                          MODEL_FILE, PHASES, RUN_FILE, SAVED_MODEL, SUMMARY)

FILES = {"model_path": MODEL_FILE, "saved_model_path": SAVED_MODEL,
         "best_model_path": BEST_MODEL, "metrics_path": METRICS, "summary_path": SUMMARY,
         "confusion_png": CONFUSION_PNG, "curves_png": CURVES_PNG, "hygiene_path": HYGIENE_TXT,
         "run_path": RUN_FILE}


@dataclass
class FinetuneResult:
    """What `finetune` produced. Paths are absolute; `history` covers this call's epochs only
    (`history["epoch"]` are run-wide 1-based epoch numbers, `history["phase"]` their phases)."""

    out_dir: str
    model_path: str                 # final model (best epoch), raw RGB 0-255 input
    saved_model_path: str           # the same model as a TensorFlow SavedModel
    best_model_path: str
    metrics_path: str
    summary_path: str
    confusion_png: str
    curves_png: str
    hygiene_path: str
    run_path: str                   # run.json: class names + weights record
    class_names: tuple
    best_val_accuracy: float | None  # best monitored value (val_accuracy, else accuracy)
    val_accuracy: float | None       # of the exported model on the validation set
    epochs: dict                     # {"head": n, "finetune": m} over all attempts
    resumed: bool
    test_accuracy: float | None = None  # of the exported model on `test/`, when present
    history: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    def __str__(self):
        s = self.summary
        test = "" if self.test_accuracy is None else f", test accuracy {_fmt(self.test_accuracy)}"
        lines = [f"Fine-tuned {s['model']} (weights={s['weights']}) on {len(self.class_names)} "
                 f"classes: best {s['monitor']} {_fmt(self.best_val_accuracy)}, exported model "
                 f"{s['final']['split']} accuracy {_fmt(self.val_accuracy)}{test}, epochs "
                 f"{self.epochs}" + (" (resumed)" if self.resumed else "")]
        lines += [f"  {key}: {getattr(self, key)}" for key in FILES]
        return "\n".join(lines)


def _fmt(value):
    return "n/a" if value is None else f"{value:.4f}"


def finish(run, data, model, settings, *, monitor, timings, info):
    """Best weights -> evaluation (validation, then test once), exports, PNGs, summary; mark
    the run complete and remove what only a resume needs.

    Args:
        run: the `RunState`; data: the `FolderData`; model: the trained classifier;
        settings: the run's settings; monitor: the metric that chose the best epoch;
        timings: seconds per step so far (updated); info: the `WeightsInfo` to export with
        the run's class names.
    """
    start = time.perf_counter()
    if os.path.exists(run.file(BEST_MODEL)):  # weights only: its optimizer may be another's
        model.set_weights(keras.models.load_model(run.file(BEST_MODEL),
                                                  compile=False).get_weights())
    split = "val" if data.count("val") else "train"
    final = evaluate(model, data, split)
    test = evaluate(model, data, "test") if data.count("test") else None
    exported = keras.Model(model.inputs[0], model.outputs[0], name=model.name)  # uncompiled
    info = info.replace(class_names=tuple(data.class_names))
    save_model(exported, run.file(MODEL_FILE), info=info)
    export_saved_model(exported, run.file(SAVED_MODEL), class_names=data.class_names)
    write_text(run.file(RUN_FILE), json.dumps(
        {"class_names": list(data.class_names), "image_size": settings["image_size"],
         "input": "raw RGB 0-255 (preprocessing inside the model)", "weights": info.as_dict(),
         "model_file": FILES["model_path"], "saved_model": FILES["saved_model_path"]},
        indent=2) + "\n", fsync=True)
    rows = reporting.read_metrics(run.file(METRICS))
    reporting.save_confusion_png(np.asarray(final["confusion_matrix"]), data.class_names,
                                 run.file(CONFUSION_PNG),
                                 title=f"Confusion matrix ({split})")
    reporting.save_curves_png(rows, run.file(CURVES_PNG))
    timings["finish"] = round(time.perf_counter() - start, 3)
    summary = _summary(run, data, settings, monitor, timings, final, test, rows)
    reporting.write_json(run.file(SUMMARY), summary)
    run.mark_complete()
    tidy(run)
    return result(run, summary, history=_history(rows, run.attempt))


def evaluate(model, data, split):
    """Accuracy, loss-free confusion matrix and per-class metrics of `model` on one split."""
    probs = model.predict(data.make(split), verbose=0)
    y_true, y_pred = data.labels(split), np.argmax(probs, axis=-1)
    cm = reporting.confusion_matrix(y_true, y_pred, len(data.class_names))
    return {"split": split, "images": int(len(y_true)),
            "accuracy": float(np.mean(y_true == y_pred)), "confusion_matrix": cm.tolist(),
            "per_class": reporting.per_class_metrics(cm, data.class_names)}


def result(run, summary, history):
    """A `FinetuneResult` from a run folder and its summary."""
    test = summary.get("test")
    return FinetuneResult(out_dir=run.out_dir, **{k: run.file(v) for k, v in FILES.items()},
                          class_names=tuple(summary["classes"]),
                          best_val_accuracy=summary["best_val_accuracy"],
                          val_accuracy=summary["final"]["accuracy"], epochs=summary["epochs"],
                          resumed=run.resumed, test_accuracy=test and test["accuracy"],
                          history=history, summary=summary)


def _summary(run, data, settings, monitor, timings, final, test, rows):
    phases = {p: run.phase(p) for p in PHASES}
    return {
        "model": settings["model"], "weights": weights_argument(settings["weights"]),
        "image_size": settings["image_size"],
        "input": "raw RGB 0-255 (preprocessing inside the model)",
        "classes": list(data.class_names),
        "counts": {part: np.bincount(data.labels(part), minlength=len(data.class_names))
                   .tolist() for part in ("train", "val", "test") if data.count(part)},
        "class_weights": ({data.class_names[i]: w for i, w in data.class_weights.items()}
                          if settings["class_weights"] else None),
        "epochs": {p: phases[p].get("epochs", 0) for p in PHASES},
        "head_on_embeddings": bool(phases["head"].get("embeddings", False)),
        "monitor": monitor,
        "best_val_accuracy": best_so_far(run.file(METRICS), monitor),
        "final": final,
        "test": test,
        "timings_s": {**{p: phases[p]["seconds"] for p in PHASES}, **timings},
        "attempts": run.attempt, "epochs_logged": len(rows), "settings": settings,
        "hygiene": {"counts": data.report.counts, "skipped": len(data.report.skipped),
                    "warnings": len(data.report.warnings),
                    "converted": len(data.report.converted), "report": "hygiene.txt"},
        "files": dict(FILES),
        "versions": {"keras": keras.__version__, "tensorflow": _tf_version()},
    }


def _tf_version():
    import tensorflow as tf

    return tf.__version__


def _history(rows, attempt):
    mine = [r for r in rows if r["run"] == attempt]
    keys = ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
    return {k: [r.get(k) for r in mine] for k in keys}


def tidy(run):
    """Drop what only a resume needs (per-phase weights, embeddings, backups) and any
    temporary a killed writer left."""
    shutil.rmtree(run.file(EMBEDDINGS_DIR), ignore_errors=True)
    shutil.rmtree(run.file(CACHE_DIR), ignore_errors=True)
    for phase in PHASES:
        name = run.phase(phase).get("weights")
        if name and os.path.exists(run.file(name)):
            os.remove(run.file(name))
    backup = run.file(BACKUP_DIR)
    if os.path.isdir(backup) and not any(os.scandir(backup)):
        os.rmdir(backup)
    remove_leftovers(run.out_dir)
