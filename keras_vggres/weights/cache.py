"""Check every entry of the weights cache, one result per file; optionally delete the bad ones.

Checked: every manifest file present in the folder (size and hashes), every converted file
``*.keras_vggres.h5`` (against its sidecar and its source's spec, see ``converted``), and every
sidecar whose converted file is gone. A problem with one entry (wrong bytes, a directory or a
FIFO in its place, no read permission) is reported and the check goes on with the next one.

Deleting holds the entry's per-file lock (``<name>.lock``, the one ``fetch`` and conversions
hold) and re-checks the entry under it, so a file that a concurrent download has just replaced
with a good copy is never deleted. Non-empty directories are reported, never removed.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from keras_vggres.weights import _fs, converted as conv, download
from keras_vggres.weights.download import NotRegularFileError
from keras_vggres.weights.spec import FileSpec

__all__ = ["STATUSES", "EntryResult", "verify_cache"]

OK, BAD, NOT_REGULAR, UNREADABLE = "ok", "BAD", "NOT REGULAR", "UNREADABLE"
STATUSES = (OK, BAD, NOT_REGULAR, UNREADABLE)


@dataclass(frozen=True)
class EntryResult:
    """The outcome for one cache entry: ``status`` is one of `STATUSES`."""

    path: Path
    status: str
    detail: str | None = None
    deleted: bool = False
    note: str | None = None  # what --delete did or why it did not

    @property
    def ok(self) -> bool:
        return self.status == OK

    def line(self) -> str:
        """One report line: status, path, reason, what was done."""
        text = f"{self.status:<11} {self.path}"
        if self.detail:
            text += f": {self.detail}"
        return text + (f" [{self.note}]" if self.note else "")


def verify_cache(folder: str | os.PathLike | None = None, *, delete: bool = False,
                 specs: Iterable[FileSpec] | None = None) -> list[EntryResult]:
    """Check every cache entry of ``folder``; with ``delete``, remove those that fail.

    Args:
        folder: the cache folder; default `download.cache_dir()`.
        delete: delete failing entries (and their sidecars), each under its lock.
        specs: the files to look for; default every file of the manifest.

    Raises:
        FileNotFoundError: ``folder`` does not exist (nothing can have been checked).
        NotADirectoryError: ``folder`` is not a directory.
    """
    folder = Path(folder).expanduser() if folder is not None else download.cache_dir()
    if not folder.exists():
        raise FileNotFoundError(
            f"The cache folder {folder} does not exist, so there is nothing to verify. It is "
            "KERAS_VGGRES_HOME if set, else $KERAS_HOME/models, else ~/.keras/models; fill it "
            "with `keras-vggres download`, or point KERAS_VGGRES_HOME at your cache.")
    if not folder.is_dir():
        raise NotADirectoryError(f"The cache folder {folder} is {_fs.describe(folder)}, not a "
                                 "directory; nothing was verified.")
    by_name = {spec.name: spec for spec in (_manifest_specs() if specs is None else specs)}
    results = []
    for name, spec in by_name.items():
        path = folder / name
        if os.path.lexists(path):
            results.append(_check_entry(path, _spec_check(spec), delete=delete))
    for path in sorted(folder.glob("*" + conv.CONVERTED_SUFFIX)):
        check = _converted_check(path, by_name)
        results.append(_check_entry(path, check, delete=delete,
                                    companions=(conv.sidecar_path(path),)))
    for sidecar in sorted(folder.glob("*" + conv.CONVERTED_SUFFIX + conv.SIDECAR_SUFFIX)):
        owner = sidecar.with_name(sidecar.name[: -len(conv.SIDECAR_SUFFIX)])
        if not os.path.lexists(owner):
            results.append(_orphan_sidecar(sidecar, owner, delete=delete))
    return [r for r in results if r is not None]


def _spec_check(spec: FileSpec) -> Callable:
    return lambda f, path: download.check_open_file(f, spec)


def _converted_check(path: Path, by_name) -> Callable:
    return lambda f, p: conv.check_converted_file(f, path, by_name)


def _classify(path: Path, check: Callable) -> tuple[str, str | None] | None:
    """(status, detail) for one entry; None when it vanished meanwhile."""
    try:
        with _fs.open_regular(path) as f:
            problem = check(f, path)
    except FileNotFoundError:
        if not os.path.lexists(path):
            return None
        return NOT_REGULAR, f"not a regular file: it is {_fs.describe(path)}"
    except NotRegularFileError:
        return NOT_REGULAR, f"not a regular file: it is {_fs.describe(path)}"
    except OSError as exc:
        return UNREADABLE, f"unreadable ({exc})"
    return (OK, None) if problem is None else (BAD, problem)


def _check_entry(path: Path, check: Callable, *, delete: bool,
                 companions: tuple[Path, ...] = ()) -> EntryResult | None:
    """Check ``path``; when it fails and ``delete`` is set, re-check and delete under its lock."""
    found = _classify(path, check)
    if found is None:
        return None
    status, detail = found
    if status == OK or not delete:
        return EntryResult(path, status, detail)
    try:
        with _fs.lock(path):
            found = _classify(path, check)  # a concurrent download may have fixed it meanwhile
            if found is None:
                return EntryResult(path, status, detail, note="gone before it could be deleted")
            if found[0] == OK:
                return EntryResult(path, OK, None, note="replaced by a good copy while checking")
            status, detail = found
            deleted, note = _remove(path)
            if deleted:
                for companion in companions:
                    _remove(companion)
    except _fs.UnsafeCacheEntryError as exc:  # e.g. a planted link as lock file: report, go on
        return EntryResult(path, status, detail, note=f"not deleted: {exc}")
    return EntryResult(path, status, detail, deleted=deleted, note=note)


def _orphan_sidecar(sidecar: Path, owner: Path, *, delete: bool) -> EntryResult:
    detail = f"sidecar of {owner.name}, which does not exist"
    if not delete:
        return EntryResult(sidecar, BAD, detail)
    try:
        with _fs.lock(owner):
            if os.path.lexists(owner):
                return EntryResult(sidecar, OK, None, note=f"{owner.name} appeared meanwhile")
            deleted, note = _remove(sidecar)
    except _fs.UnsafeCacheEntryError as exc:
        return EntryResult(sidecar, BAD, detail, note=f"not deleted: {exc}")
    return EntryResult(sidecar, BAD, detail, deleted=deleted, note=note)


def _remove(path: Path) -> tuple[bool, str]:
    """Remove one entry without following links; a non-empty directory is left alone."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            os.rmdir(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return False, "gone before it could be deleted"
    except OSError as exc:
        return False, f"not deleted ({exc}); remove it by hand"
    return True, "deleted"


def _manifest_specs() -> list[FileSpec]:
    """Every file of every (model, tag) in the manifest."""
    from keras_vggres.weights import manifest

    return [spec for entry in manifest.load_manifest().values()
            for record in entry.tags.values() for spec in record.files.values()]
