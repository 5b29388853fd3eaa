"""Cache-folder file access that never follows a planted link: the per-file lock, safe opens.

Every change to a cache entry ``<name>`` (publishing a download, ``verify --delete``, writing a
converted file) holds an exclusive ``flock`` on ``<name>.lock``. The lock file is opened with
``O_NOFOLLOW`` and must be a regular file: a symbolic link (even a dangling one) or any other
kind of entry in its place is refused with `UnsafeCacheEntryError`, so nothing is ever created
or locked outside the cache. The lock file stays in place on purpose: unlinking it would let two
processes lock two different inodes. Reads of cache and mirror entries go through
`open_regular`, which opens without blocking (a FIFO cannot hang us) and refuses anything that
is not a regular file (a device such as ``/dev/zero``, a FIFO, a directory).

Stdlib only.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import stat
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; unique temp names and atomic rename keep it correct
    fcntl = None

log = logging.getLogger("keras_vggres.weights.download")

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)
LOCK_SUFFIX = ".lock"
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
_NO_LOCK_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOLCK, errno.EOPNOTSUPP)


class UnsafeCacheEntryError(OSError):
    """A cache path is not the kind of file it must be (a symlink where the lock file goes)."""


class NotRegularFileError(OSError):
    """A file to read (cached copy, mirror entry) is a directory, device, FIFO, socket..."""


def kind_of(mode: int) -> str:
    """'a regular file', 'a directory', 'a FIFO', ... for an ``st_mode``."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "an unknown kind of file"


def describe(path: str | os.PathLike) -> str:
    """What is at ``path`` without following it: 'a symbolic link to /dev/zero', 'a FIFO'..."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "nothing"
    if stat.S_ISLNK(mode):
        target = os.readlink(path)
        dangling = "" if os.path.exists(path) else ", which does not exist"
        return f"a symbolic link to {target}{dangling}"
    return kind_of(mode)


def open_regular(path: str | os.PathLike):
    """Open ``path`` for binary reading if it is (or links to) a regular file.

    Opens with ``O_NONBLOCK`` so a FIFO cannot block, then checks the opened file itself.

    Raises:
        FileNotFoundError: nothing there (or a dangling link).
        NotRegularFileError: a directory, device, FIFO or socket; says what it is.
        OSError: unreadable (permissions, I/O error).
    """
    try:
        fd = os.open(path, os.O_RDONLY | NONBLOCK)
    except IsADirectoryError:
        raise NotRegularFileError(errno.EISDIR, f"{path} is a directory, not a regular file",
                                  str(path)) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFileError(errno.EINVAL, f"{path} is not a regular file: it is "
                                  f"{describe(path)} (opened as {kind_of(mode)})", str(path))
    if NONBLOCK:
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def open_new(path: str | os.PathLike, *, append: bool = False):
    """Open a temp file for writing: create it fresh (``O_EXCL``), or append to our own partial.

    Neither form follows a symbolic link; a link or other entry squatting on a fresh temp name is
    removed (the name is ours: random and beside the final file), never written through.
    """
    if append:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | NOFOLLOW)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotRegularFileError(errno.EINVAL, f"{path} is not a regular file", str(path))
        return os.fdopen(fd, "ab")
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)  # a link is removed itself; its target is untouched
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644), "wb")


def regular_size(path: str | os.PathLike) -> int:
    """Size of ``path`` if it is a regular file (never following a link); else 0."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


def lock_path(final: Path) -> Path:
    return final.with_name(final.name + LOCK_SUFFIX)


@contextlib.contextmanager
def lock(final: Path):
    """Hold the exclusive flock of ``final`` (``<final>.lock``); yields whether it is held.

    A folder where locking is impossible (read-only, no flock) goes on without the lock: the
    downloader's correctness does not depend on it. A lock path that is not a regular file
    raises `UnsafeCacheEntryError`.
    """
    fd = _acquire(lock_path(final)) if fcntl is not None else None
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock


def _acquire(path: Path) -> int | None:
    """Open and flock ``path``, saying so when we must wait; None if locking is impossible."""
    _refuse_unsafe_lock(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | NOFOLLOW | NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            _refuse_unsafe_lock(path, force=True)
        if exc.errno in _NO_LOCK_ERRNOS:
            log.debug("No lock %s (%s); continuing without it.", path, exc)
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            _refuse_unsafe_lock(path, force=True)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("Waiting for another process to finish %s.", path.with_suffix(""))
            fcntl.flock(fd, fcntl.LOCK_EX)
        return fd
    except OSError as exc:
        os.close(fd)
        if isinstance(exc, UnsafeCacheEntryError) or exc.errno not in _NO_LOCK_ERRNOS:
            raise
        log.debug("No lock %s (%s); continuing without it.", path, exc)
        return None


def _refuse_unsafe_lock(path: Path, *, force: bool = False) -> None:
    """Raise when the lock path exists and is not a regular file (checked without following)."""
    what = describe(path)
    if what in ("nothing", "a regular file") and not force:
        return
    raise UnsafeCacheEntryError(
        errno.ELOOP if what.startswith("a symbolic link") else errno.EINVAL,
        f"The lock file {path} is {what}, not a regular file; refusing to use it (following it "
        f"could create or lock a file outside the cache). Remove {path} and try again.",
        str(path))


def remove_temps(final: Path, suffix: str = "") -> list[Path]:
    """Delete temp files of dead writers of ``final``; call only while holding its lock.

    Matches `keras_vggres._atomic` temp names (``<stem>.<8 hex>.tmp<suffix>``) and the older
    ``<name>.<8 hex>.incomplete``. Every live writer of ``final`` holds the lock, so these are
    leftovers. Links are removed themselves (their targets are untouched); folders are left.
    """
    from keras_vggres._atomic import TMP_MARK

    stem = final.name[: -len(suffix)] if suffix and final.name.endswith(suffix) else final.name
    hex8 = "[0-9a-f]" * 8
    removed = []
    for pattern in (f"{glob.escape(stem)}.{hex8}{TMP_MARK}{suffix}",
                    f"{glob.escape(final.name)}.{hex8}.incomplete"):
        for stale in final.parent.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISDIR(os.lstat(stale).st_mode):
                    stale.unlink()
                    removed.append(stale)
    return removed
