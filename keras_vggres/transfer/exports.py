"""The end of a fine-tuning run: evaluate the best model, export it, write the summary.

Outputs in the run folder: `model.keras` (the best epoch's weights, not compiled: it loads
wherever `keras_vggres` is imported, for inference or a new `compile`) and `saved_model/`
(TensorFlow SavedModel, endpoint "serve"), both taking raw RGB 0-255 images; `best.keras`
(with optimizer state, to continue training), `metrics.csv`, `summary.json`,
`confusion_matrix.png`, `curves.png`, `hygiene.txt`/`.json`.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field

import keras
import numpy as np

from keras_vggres._atomic import replacing
from keras_vggres.transfer import report as reporting
from keras_vggres.transfer.runstate import best_so_far, save_atomically

PHASES = ("head", "finetune")
FILES = {"model_path": "model.keras", "saved_model_path": "saved_model",
         "best_model_path": "best.keras", "metrics_path": "metrics.csv",
         "summary_path": "summary.json", "confusion_png": "confusion_matrix.png",
         "curves_png": "curves.png", "hygiene_path": "hygiene.txt"}


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
    class_names: tuple
    best_val_accuracy: float | None  # best monitored value (val_accuracy, else accuracy)
    val_accuracy: float | None       # of the exported model on the validation set
    epochs: dict                     # {"head": n, "finetune": m} over all attempts
    resumed: bool
    history: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    def __str__(self):
        s = self.summary
        lines = [f"Fine-tuned {s['model']} (weights={s['weights']}) on {len(self.class_names)} "
                 f"classes: best {s['monitor']} {_fmt(self.best_val_accuracy)}, exported model "
                 f"{s['final']['split']} accuracy {_fmt(self.val_accuracy)}, epochs {self.epochs}"
                 + (" (resumed)" if self.resumed else "")]
        lines += [f"  {key}: {getattr(self, key)}" for key in FILES]
        return "\n".join(lines)


def _fmt(value):
    return "n/a" if value is None else f"{value:.4f}"


def finish(ctx):
    """Best weights -> evaluation, exports, PNGs, summary; mark the run complete."""
    run, data, model = ctx.run, ctx.data, ctx.model
    start = time.perf_counter()
    if os.path.exists(run.file("best.keras")):  # weights only: its optimizer may be another's
        model.set_weights(keras.models.load_model(run.file("best.keras"),
                                                  compile=False).get_weights())
    split = "val" if data.count("val") else "train"
    probs = model.predict(data.make(split), verbose=0)
    y_true, y_pred = data.labels(split), np.argmax(probs, axis=-1)
    cm = reporting.confusion_matrix(y_true, y_pred, len(data.class_names))
    final = keras.Model(model.inputs[0], model.outputs[0], name=model.name)  # uncompiled twin
    save_atomically(final, run.file("model.keras"))
    export_saved_model(final, run.file("saved_model"))
    rows = reporting.read_metrics(run.file("metrics.csv"))
    reporting.save_confusion_png(cm, data.class_names, run.file("confusion_matrix.png"),
                                 title=f"Confusion matrix ({split})")
    reporting.save_curves_png(rows, run.file("curves.png"))
    ctx.timings["finish"] = round(time.perf_counter() - start, 3)
    summary = _summary(ctx, cm, split, float(np.mean(y_true == y_pred)), rows)
    reporting.write_json(run.file("summary.json"), summary)
    run.mark_complete()
    _tidy(run)
    return result(run, summary, history=_history(rows, run.attempt))


def export_saved_model(model, path):
    """`model.export(path)` (TensorFlow SavedModel, endpoint "serve") via a temporary folder."""
    with replacing(path) as tmp:
        model.export(tmp, verbose=False)
    return path


def result(run, summary, history):
    """A `FinetuneResult` from a run folder and its summary."""
    return FinetuneResult(out_dir=run.out_dir, **{k: run.file(v) for k, v in FILES.items()},
                          class_names=tuple(summary["classes"]),
                          best_val_accuracy=summary["best_val_accuracy"],
                          val_accuracy=summary["final"]["accuracy"], epochs=summary["epochs"],
                          resumed=run.resumed, history=history, summary=summary)


def _summary(ctx, cm, split, accuracy, rows):
    run, data, s = ctx.run, ctx.data, ctx.settings
    phases = {p: run.phase(p) for p in PHASES}
    return {
        "model": s["model"], "weights": s["weights"], "image_size": s["image_size"],
        "input": "raw RGB 0-255 (preprocessing inside the model)",
        "classes": list(data.class_names),
        "counts": {part: np.bincount(data.labels(part), minlength=len(data.class_names))
                   .tolist() for part in ("train", "val") if data.count(part)},
        "class_weights": {data.class_names[i]: w for i, w in data.class_weights.items()},
        "epochs": {p: phases[p].get("epochs", 0) for p in PHASES},
        "head_on_embeddings": bool(phases["head"].get("embeddings", False)),
        "monitor": ctx.monitor,
        "best_val_accuracy": best_so_far(run.file("metrics.csv"), ctx.monitor),
        "final": {"split": split, "accuracy": accuracy, "confusion_matrix": cm.tolist(),
                  "per_class": reporting.per_class_metrics(cm, data.class_names)},
        "timings_s": {**{p: phases[p]["seconds"] for p in PHASES}, **ctx.timings},
        "attempts": run.attempt, "epochs_logged": len(rows), "settings": s,
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


def _tidy(run):
    """Drop what only a resume needs: per-phase weights, embeddings, empty backup folders."""
    shutil.rmtree(run.file("embeddings"), ignore_errors=True)
    for phase in PHASES:
        name = run.phase(phase).get("weights")
        if name and os.path.exists(run.file(name)):
            os.remove(run.file(name))
    backup = run.file("backup")
    if os.path.isdir(backup) and not any(os.scandir(backup)):
        os.rmdir(backup)
