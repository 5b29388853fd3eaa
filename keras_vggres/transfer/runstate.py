"""A resumable run folder: settings, data fingerprint and phase progress in `state.json`.

`finetune` trains in phases; each phase is one `fit` backed up by a crash-consistent
`callbacks.AtomicBackupAndRestore` in its own folder (`backup/<phase>`), and marked done here
(with its weights saved) when it ends. A run restarted with the same `out_dir`, settings and
data skips finished phases and continues the current one at the epoch after the last finished
one. One process at a time owns a run folder (an exclusive lock on `.lock`); on every start the
temporaries a killed writer left behind are removed.
"""

from __future__ import annotations

import json
import os
import shutil

from keras_vggres._atomic import remove_leftovers, write_text
from keras_vggres.transfer import fingerprint
from keras_vggres.transfer.callbacks import (BestModelCheckpoint,  # noqa: F401 (re-exported)
                                             ResumableEarlyStopping, best_so_far,
                                             save_atomically)

from keras_vggres.transfer.layout import (BACKUP_DIR, DATA_FILES, LOCK_FILE, RUN_ENTRIES,
                                          STATE_FILE, WORKERS_DIR, phase_weights)

# Settings that may change between attempts of one run without invalidating it.
VOLATILE_SETTINGS = ("verbose", "cache")


class RunFolderBusyError(RuntimeError):
    """Another process holds the run folder's lock."""


class RunState:
    """The `state.json` of a run folder: settings, data fingerprint, attempts, phase status.

    Args:
        out_dir: the run folder (created).
        settings: JSON-able settings that identify the run; a resume must have the same.
        files: the data folder's `fingerprint.folder_files` listing, or None.
        restart: remove an earlier run's files from `out_dir` and start over.
        lock: take the folder's exclusive lock (False for read-only use in tests).
    """

    def __init__(self, out_dir, settings, *, files=None, restart=False, lock=True):
        self._lock_fd = None
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.path = os.path.join(self.out_dir, STATE_FILE)
        os.makedirs(self.out_dir, exist_ok=True)
        self._lock_fd = _lock(self.file(LOCK_FILE)) if lock else None
        try:
            self._open(settings, files, restart)
        except BaseException:
            self.close()  # a refused resume must not keep the folder locked (Jupyter keeps
            raise         # the traceback, and with it this object, alive)
        self.resumed = self.state["attempts"] > 0

    def _open(self, settings, files, restart):
        if restart:
            clear(self.out_dir)
        remove_leftovers(self.out_dir, skip=(WORKERS_DIR,))  # other workers' files are live
        settings = dict(settings)
        if files is not None:
            settings["data_fingerprint"] = fingerprint.digest(files)
        if os.path.exists(self.path):
            self.state = _read_state(self.path)
            _check_same_settings(self.path, self.state["settings"], settings,
                                 self.file(DATA_FILES), files)
        else:
            self.state = {"settings": settings, "attempts": 0, "phases": {}, "complete": False}
            if files is not None:
                write_text(self.file(DATA_FILES), json.dumps(files) + "\n", fsync=True)
            self.save()

    # -- lifecycle
    def begin_attempt(self):
        """Count this attempt (called once training is about to start, not for failed set-ups)."""
        self.state["attempts"] += 1
        self.save()
        return self.attempt

    def close(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading
    @property
    def attempt(self):
        return self.state["attempts"]

    @property
    def complete(self):
        return self.state["complete"]

    @property
    def settings(self):
        return self.state["settings"]

    def file(self, *parts):
        return os.path.join(self.out_dir, *parts)

    def phase(self, name):
        """This phase's record: {"done": bool, "epochs": int, "seconds": float, ...}."""
        return self.state["phases"].setdefault(name, {"done": False, "seconds": 0.0})

    # -- writing
    def add_seconds(self, name, seconds):
        self.phase(name)["seconds"] = round(self.phase(name)["seconds"] + seconds, 3)
        self.save()

    def finish_phase(self, name, model, **info):
        """Save `model`'s weights as this phase's result, mark the phase done, then drop its
        backup (a kill before the mark leaves the backup, and the phase resumes from it)."""
        weights = self.file(phase_weights(name))
        save_atomically(model, weights)
        self.phase(name).update(done=True, weights=os.path.basename(weights), **info)
        self.save()
        shutil.rmtree(self.file(BACKUP_DIR, name), ignore_errors=True)

    def mark_complete(self, **info):
        self.state.update(complete=True, **info)
        self.save()

    def save(self):
        write_text(self.path, json.dumps(self.state, indent=2) + "\n", fsync=True)


def clear(out_dir):
    """Remove what a run writes (`RUN_ENTRIES`) from `out_dir`; other files stay."""
    for name in RUN_ENTRIES:
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def _lock(path):
    """An exclusive, non-blocking flock on `path` (never following a symlink)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock; one run per folder is then up to the user
        return None
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunFolderBusyError(
            f"Another process is running in {os.path.dirname(path)!r} (it holds {path!r}); "
            "wait for it to finish or use another `out_dir`.") from None
    return fd


def _read_state(path):
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        if not isinstance(state, dict) or not {"settings", "attempts", "phases",
                                               "complete"} <= state.keys():
            raise ValueError("missing keys")
        return state
    except (OSError, ValueError) as err:
        raise ValueError(f"The run state {path!r} is unreadable ({err}); start the run over "
                         "with restart=True (CLI: --restart) or use another `out_dir`.") from err


def _check_same_settings(path, old, new, files_path, files):
    keys = sorted((set(old) | set(new)) - set(VOLATILE_SETTINGS) - {"data_fingerprint"})
    changed = [k for k in keys if old.get(k) != new.get(k)]
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(f"{path} belongs to a run with other settings ({details}); resume with "
                         "the same settings, pass restart=True (CLI: --restart) to start this "
                         "run over, or pass another `out_dir`.")
    if old.get("data_fingerprint") != new.get("data_fingerprint"):
        what = "the data folder changed"
        if files is not None and os.path.exists(files_path):
            with open(files_path, encoding="utf-8") as f:
                what += ": " + fingerprint.describe_changes(json.load(f), files)
        raise ValueError(f"{path}: {what} since this run started. A resumed run must train on "
                         "the same images (its split, cached embeddings and finished epochs "
                         "depend on them). Restore the folder, pass restart=True (CLI: "
                         "--restart) to start this run over on the new data, or pass another "
                         "`out_dir`.")
