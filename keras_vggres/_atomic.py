"""The one all-or-nothing writer: write to a temporary sibling, rename it over the target.

A crash or an exception mid-write leaves the previous file (or nothing) under the final name,
never a half-written one, and no temporary behind (a SIGKILL can leave a temporary; every
temporary is named `<name>.<8 hex>.tmp<suffix>`, which `remove_leftovers` recognises).
`fsync=True` also makes the bytes and the rename durable (weight files, downloads, run state).
Stdlib only.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from contextlib import contextmanager

TMP_MARK = ".tmp"
_LEFTOVER = re.compile(r"\.[0-9a-f]{8}\.tmp")


def temp_sibling(path, suffix=""):
    """A fresh temporary name beside `path`, keeping `suffix` (Keras picks formats by it)."""
    path = os.fspath(path)
    stem = path[: -len(suffix)] if suffix and path.endswith(suffix) else path
    return f"{stem}.{uuid.uuid4().hex[:8]}{TMP_MARK}{suffix}"


@contextmanager
def replacing(path, *, suffix="", fsync=False):
    """Yield a temporary path beside `path`; it becomes `path` only if the block succeeds.

    Works for files and folders (a SavedModel): an existing folder at `path` is replaced, and
    removed only once the new one is in place (a failed swap puts it back).
    `suffix` is kept at the end of the temporary name for writers that choose the format from
    it (Keras: `.keras`, `.weights.h5`; NumPy: `.npz`). With `fsync=True` the file's bytes
    and the rename are flushed to disk before returning. A missing parent folder is created.
    """
    path = os.path.normpath(os.fspath(path))  # "sm/" would put the temporary inside "sm"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_sibling(path, suffix)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        if os.path.isdir(tmp) and os.path.isdir(path) and not os.path.islink(path):
            _replace_folder(tmp, path)
        else:
            os.replace(tmp, path)
        if fsync:
            fsync_folder(os.path.dirname(os.path.abspath(path)))
    finally:
        _remove(tmp)


def _replace_folder(new, path):
    """Swap the folder `new` in at `path`: the old folder is moved aside, not deleted, until
    the new one is in place, so a failing rename (`path` is ".", a mount point) loses nothing."""
    old = temp_sibling(path)
    os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_bytes(path, data, *, fsync=False):
    """Write `data` to `path` atomically; returns `path`."""
    with replacing(path, fsync=fsync) as tmp:
        with open(tmp, "xb") as f:
            f.write(data)
    return os.fspath(path)


def write_text(path, text, *, fsync=False):
    """Write `text` (UTF-8) to `path` atomically; returns `path`."""
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


def fsync_file(path):
    """Flush a regular file's bytes to disk (folders are left alone)."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def fsync_folder(folder):
    """Make a rename inside `folder` durable (POSIX); platforms that cannot, skip it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_leftover(name):
    """Whether a file name is a temporary of `replacing` (left behind by a killed writer)."""
    return bool(_LEFTOVER.search(os.path.basename(os.fspath(name))))


def remove_leftovers(folder, *, recursive=True, skip=()):
    """Delete temporaries of killed writers under `folder`; returns the paths removed.

    Only for folders owned by one writer at a time (a run folder under its lock): a live
    writer's temporary looks the same as a dead one's. Sub-folders named in `skip` (at the top
    level) belong to other writers and are left alone.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for dirpath, dirnames, filenames in os.walk(folder):
        if dirpath == os.fspath(folder):
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in list(dirnames) + filenames:
            if is_leftover(name):
                full = os.path.join(dirpath, name)
                _remove(full)
                removed.append(full)
                if name in dirnames:
                    dirnames.remove(name)
        if not recursive:
            break
    return removed


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)
