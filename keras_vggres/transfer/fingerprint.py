"""A cheap fingerprint of an image folder (file names, sizes, mtimes) to tell when data changed.

A resumed run must train on the data it started with: cached embeddings, the split and the
epochs already done all depend on it. The fingerprint is read from the file system alone (no
image is opened), so computing it on every start costs a directory walk.
"""

from __future__ import annotations

import hashlib
import json
import os

SHOWN_CHANGES = 5


def folder_files(data_dir):
    """[[relative path, size, mtime_ns], ...] of every non-hidden file below `data_dir`, sorted.

    Paths that are not valid UTF-8 are kept escaped (surrogateescape), so they still compare.
    Symlinked folders are followed (a symlinked class folder's files count).
    """
    root = os.path.abspath(os.fspath(data_dir))
    entries, seen = [], set()
    # Symlinked folders are followed, as the scan follows symlinked class folders; each real
    # folder is listed once, so a link loop ends.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            try:
                info = os.stat(path)
            except OSError:  # a dangling symlink: its name still counts
                entries.append([_portable(os.path.relpath(path, root)), -1, -1])
                continue
            entries.append([_portable(os.path.relpath(path, root)), info.st_size,
                            info.st_mtime_ns])
    return entries


def digest(entries):
    """SHA-256 (hex, 16 characters) of a `folder_files` listing."""
    text = json.dumps(entries, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def describe_changes(old, new):
    """A short text of what differs between two `folder_files` listings."""
    old_map = {path: (size, mtime) for path, size, mtime in old}
    new_map = {path: (size, mtime) for path, size, mtime in new}
    added = sorted(new_map.keys() - old_map.keys())
    removed = sorted(old_map.keys() - new_map.keys())
    changed = sorted(p for p in old_map.keys() & new_map.keys() if old_map[p] != new_map[p])
    parts = []
    for label, paths in (("added", added), ("removed", removed), ("modified", changed)):
        if paths:
            shown = ", ".join(paths[:SHOWN_CHANGES]) + (", ..." if len(paths) > SHOWN_CHANGES
                                                        else "")
            parts.append(f"{len(paths)} files {label} ({shown})")
    return "; ".join(parts) or "no file differs (the listing order or format changed)"


def _portable(path):
    """A JSON-safe form of a path (undecodable bytes escaped as \\udcXX)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
