"""A resumable run folder: settings + phase progress in `state.json`, atomic best checkpoints.

`finetune` trains in phases; each phase is one `fit` backed up by `BackupAndRestore` in its own
folder (`backup/<phase>`), and marked done here (with its weights saved) when it ends. A run
restarted with the same `out_dir` and settings skips finished phases and continues the current
one at the epoch after the last finished one.
"""

from __future__ import annotations

import os

import keras

from keras_vggres._atomic import replacing
from keras_vggres.transfer.report import read_json, read_metrics, write_json

STATE_FILE = "state.json"
# Settings that may change between attempts of one run without invalidating it.
VOLATILE_SETTINGS = ("verbose",)


class RunState:
    """The `state.json` of a run folder: settings, attempt counter, per-phase status."""

    def __init__(self, out_dir, settings):
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.path = os.path.join(self.out_dir, STATE_FILE)
        os.makedirs(self.out_dir, exist_ok=True)
        if os.path.exists(self.path):
            self.state = read_json(self.path)
            _check_same_settings(self.path, self.state["settings"], settings)
        else:
            self.state = {"settings": settings, "attempts": 0, "phases": {}, "complete": False}
        self.resumed = self.state["attempts"] > 0
        if not self.complete:  # a finished run is only read
            self.state["attempts"] += 1
            self.save()

    @property
    def attempt(self):
        return self.state["attempts"]

    @property
    def complete(self):
        return self.state["complete"]

    def file(self, *parts):
        return os.path.join(self.out_dir, *parts)

    def phase(self, name):
        """This phase's record: {"done": bool, "epochs": int, "seconds": float, ...}."""
        return self.state["phases"].setdefault(name, {"done": False, "seconds": 0.0})

    def add_seconds(self, name, seconds):
        self.phase(name)["seconds"] = round(self.phase(name)["seconds"] + seconds, 3)
        self.save()

    def finish_phase(self, name, model, **info):
        """Save `model`'s weights as this phase's result, then mark the phase done."""
        weights = self.file(f"{name}.weights.h5")
        save_atomically(model, weights)
        self.phase(name).update(done=True, weights=os.path.basename(weights), **info)
        self.save()

    def mark_complete(self, **info):
        self.state.update(complete=True, **info)
        self.save()

    def save(self):
        write_json(self.path, self.state)


def _check_same_settings(path, old, new):
    keys = sorted((set(old) | set(new)) - set(VOLATILE_SETTINGS))
    changed = [k for k in keys if old.get(k) != new.get(k)]
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(f"{path} belongs to a run with other settings ({details}); resume with "
                         "the same settings or pass another `out_dir`.")


def save_atomically(model, path):
    """`model.save` / `save_weights` to a temporary name with the same suffix, then rename."""
    path = os.fspath(path)
    suffix = ".weights.h5" if path.endswith(".weights.h5") else os.path.splitext(path)[1]
    with replacing(path, suffix=suffix) as tmp:
        if suffix == ".weights.h5":
            model.save_weights(tmp)
        else:
            model.save(tmp)
    return path


def best_so_far(metrics_path, monitor, phases=None):
    """Best (max) `monitor` value among finished epochs in the metrics CSV, or None."""
    values = [r[monitor] for r in read_metrics(metrics_path)
              if r.get(monitor) is not None and (phases is None or r["phase"] in phases)]
    return max(values) if values else None


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save `model` (the full classifier, not necessarily the model being fit) to `path`
    whenever `monitor` beats every earlier value, including `initial_best` from earlier phases
    or attempts. Saves are atomic, so `path` always holds a complete `.keras` file."""

    def __init__(self, model, path, *, monitor, initial_best=None):
        super().__init__()
        self.full_model, self.path, self.monitor = model, os.fspath(path), monitor
        self.best = initial_best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        if self.best is None or float(value) > self.best:
            self.best = float(value)
            save_atomically(self.full_model, self.path)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """`EarlyStopping` whose patience survives a restart.

    Keras' BackupAndRestore brings back the weights and the epoch, not other callbacks' state,
    so a resumed fit would start counting patience from zero. This callback replays the
    monitored values of the epochs the backup says are finished (from the metrics CSV, rows of
    `phase` numbered after `epoch_offset`), so a run stops where an uninterrupted one would.
    List it after BackupAndRestore: it reads the restored epoch in `on_train_begin`.
    """

    def __init__(self, metrics_path, *, phase, epoch_offset=0, **kwargs):
        super().__init__(**kwargs)
        self.metrics_path, self.phase, self.epoch_offset = os.fspath(metrics_path), phase, \
            epoch_offset

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        finished = getattr(self.model, "_initial_epoch", None) or 0
        rows = {r["epoch"] - self.epoch_offset: r.get(self.monitor)
                for r in read_metrics(self.metrics_path) if r["phase"] == self.phase}
        if self.monitor_op is None:
            self._set_monitor_op()
        for epoch in range(1, finished + 1):
            self._replay(epoch - 1, rows.get(epoch))

    def _replay(self, epoch, value):
        """What `on_epoch_end` did with `value`, minus weights (BestModelCheckpoint has them)."""
        if value is None or epoch < self.start_from_epoch:
            return
        self.wait += 1
        if self._is_improvement(value, self.best):
            self.best, self.best_epoch = value, epoch
            if self.baseline is None or self._is_improvement(value, self.baseline):
                self.wait = 0

