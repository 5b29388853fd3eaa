"""All-or-nothing outputs: write to a temporary sibling, rename it over the target on success.

A crash or an exception mid-write leaves the previous file (or nothing) under the final name,
never a half-written one, and no temporary behind. Weight files and downloads add fsyncs and a
lock on top of this (`weights.h5`, `weights.download`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager


@contextmanager
def replacing(path, *, suffix=""):
    """Yield a temporary path beside `path`; it becomes `path` only if the block succeeds.

    Works for files and folders (a SavedModel): an existing folder at `path` is replaced.
    `suffix` is kept at the end of the temporary name for writers that choose the format from
    it (Keras: `.keras`, `.weights.h5`).
    """
    path = os.fspath(path)
    stem = path[: -len(suffix)] if suffix and path.endswith(suffix) else path
    tmp = f"{stem}.{uuid.uuid4().hex[:8]}.tmp{suffix}"
    try:
        yield tmp
        if os.path.isdir(tmp) and os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.remove(tmp)
