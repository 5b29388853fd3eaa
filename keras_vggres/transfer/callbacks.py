"""Keras callbacks of the fine-tuning recipe: crash-consistent backups, best checkpoints,
early stopping that survives a resume, and a stop on a non-finite loss.

Every file they write appears whole or not at all (`keras_vggres._atomic`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings

import keras

from keras_vggres._atomic import replacing, write_text
from keras_vggres.transfer.report import read_metrics

BACKUP_COMMIT = "training_metadata.json"


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite: nothing is exported from a diverged run."""


def save_atomically(model, path):
    """`model.save` / `save_weights` to a temporary name with the same suffix, then rename."""
    path = os.fspath(path)
    suffix = ".weights.h5" if path.endswith(".weights.h5") else os.path.splitext(path)[1]
    with replacing(path, suffix=suffix, fsync=True) as tmp:
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



class StopOnNaN(keras.callbacks.Callback):
    """Raise `TrainingDivergedError` as soon as a batch's loss is not finite.

    Keras' `TerminateOnNaN` only stops training, and the run would then export a broken model
    and exit 0; this stops the run with a message saying where and what to change.
    """

    def __init__(self, phase):
        super().__init__()
        self.phase, self.epoch = phase, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDivergedError(
                f"The loss became {float(loss)} in the {self.phase} phase (epoch "
                f"{self.epoch + 1}, batch {batch + 1}): training diverged. Lower the learning "
                "rate (lr / finetune_lr) or check the data; nothing was exported.")


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` whose backups survive a kill at any moment.

    Each epoch's weights go to a new file `epoch-<n>.weights.h5` (written atomically), then
    `training_metadata.json` (the commit, also atomic) names that file, its SHA-256 and the
    epoch; only then are older weight files removed. On resume the commit is checked against
    the file it names: a missing, unreadable or corrupt backup is named in a warning and the
    phase restarts from its beginning instead of failing on every later attempt.
    """

    def __init__(self, backup_dir, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self._commit_path = os.path.join(os.fspath(backup_dir), BACKUP_COMMIT)

    def on_train_begin(self, logs=None):
        self._load_model()

    def _load_model(self):
        commit = self._read_commit()
        if commit is None:
            return
        weights = os.path.join(self.backup_dir, commit["weights"])
        problem = _file_problem(weights, commit["sha256"])
        if problem is None:
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            try:
                self.model.load_weights(weights)
                self.model._initial_epoch = commit["epoch"]
                return
            except (OSError, ValueError) as err:
                problem = f"it does not load ({err})"
        warnings.warn(f"Discarding the backup {weights!r}: {problem}. The phase restarts from "
                      "its first epoch.", stacklevel=2)
        self._discard()

    def _read_commit(self):
        if not os.path.exists(self._commit_path):
            return None
        try:
            with open(self._commit_path, encoding="utf-8") as f:
                commit = json.load(f)
            if {"epoch", "weights", "sha256"} <= commit.keys():
                return commit
            raise ValueError("missing keys")
        except (OSError, ValueError) as err:
            warnings.warn(f"Discarding the unreadable backup record {self._commit_path!r} "
                          f"({err}); the phase restarts from its first epoch.", stacklevel=3)
            self._discard()
            return None

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"epoch-{self._current_epoch:04d}.weights.h5"
        path = os.path.join(self.backup_dir, name)
        with replacing(path, suffix=".weights.h5", fsync=True) as tmp:
            self.model.save_weights(tmp)
        commit = {"epoch": self._current_epoch, "batch": self._last_batch_seen,
                  "weights": name, "sha256": _sha256(path)}
        write_text(self._commit_path, json.dumps(commit) + "\n", fsync=True)
        for old in os.listdir(self.backup_dir):
            if old.endswith(".weights.h5") and old != name:
                os.remove(os.path.join(self.backup_dir, old))

    def _discard(self):
        import shutil

        shutil.rmtree(self.backup_dir, ignore_errors=True)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_problem(path, sha256):
    if not os.path.isfile(path):
        return "the file it names is missing"
    if _sha256(path) != sha256:
        return "its SHA-256 does not match the commit record (truncated or modified)"
    return None
