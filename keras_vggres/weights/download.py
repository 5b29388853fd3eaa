"""Fetch one weight file into the cache: verified, atomic, and downloaded once across processes.

Resolution order: a valid cached copy (our folder, then Keras' own cache) -> the mirror
(``KERAS_VGGRES_MIRROR``) -> the origin URL. Bytes land in a `keras_vggres._atomic` temp file
(``<name>.<8 hex>.tmp``) next to the final file, bounded in size and rate (``_limits``), are
checked against the spec's size and hashes, fsynced, and renamed onto ``<name>``; a failed
download leaves nothing under the final name and removes its temp file. A local mirror entry
must be a regular file (a device, FIFO or link to ``/dev/zero`` is refused).

Every change to ``<name>`` holds the exclusive per-file lock ``<name>.lock`` (see ``_fs``; also
taken by ``verify --delete`` and by conversions), so concurrent processes download a file once;
the others wait, then find it cached. Correctness of a download never depends on the lock (temp
names are unique and the rename is atomic), so filesystems without ``flock`` still work.

Environment, read at call time: ``KERAS_VGGRES_HOME``, ``KERAS_HOME``, ``KERAS_VGGRES_MIRROR``,
``KERAS_VGGRES_OFFLINE``, ``KERAS_VGGRES_QUIET``, ``KERAS_VGGRES_TIMEOUT`` (see ``_http``),
``KERAS_VGGRES_MAX_DOWNLOAD_MIB``, ``KERAS_VGGRES_MIN_RATE``, ``KERAS_VGGRES_RATE_WINDOW`` (see
``_limits``). Nothing here imports Keras or touches the network except ``fetch``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit
from urllib.request import url2pathname

from keras_vggres import _atomic, _progress
from keras_vggres.weights import _fs, _http, _limits
from keras_vggres.weights._fs import NotRegularFileError, UnsafeCacheEntryError
from keras_vggres.weights._http import DownloadError
from keras_vggres.weights.spec import FileSpec

__all__ = ["DownloadError", "IntegrityError", "NotRegularFileError", "UnsafeCacheEntryError",
           "WeightsUnavailableError", "cache_dir", "cached_path", "check_digests",
           "check_open_file", "fetch", "hash_file", "hash_stream", "verify_file"]

log = logging.getLogger(__name__)

INTEGRITY_RETRIES = 1  # a fresh download with wrong bytes is fetched once more, then it is an error
HASH_CHUNK = 1024 * 1024
_TRUE = ("1", "true", "yes")
_MISSING_STATUS = (404, 410)  # a mirror answering these simply does not have the file
_lock = _fs.lock  # module attribute: tests replace it to prove correctness without the lock


class _Rejected(Exception):
    """Raised inside the atomic writer so that bytes failing verification are not published."""


class IntegrityError(ValueError):
    """Bytes arrived but are not the file the spec describes (size or hash mismatch)."""


class WeightsUnavailableError(FileNotFoundError):
    """The file is not available locally and offline mode forbids downloading it."""


def cache_dir() -> Path:
    """Our cache folder; by default Keras' own, so files keras.applications fetched are reused."""
    home = os.environ.get("KERAS_VGGRES_HOME")
    return Path(home).expanduser() if home else _keras_models_dir()


def cached_path(spec: FileSpec, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """A verified local copy of ``spec`` (never touches the network), or None.

    Args:
        spec: the file to look for.
        cache_dir: folder to look in; by default `cache_dir()` and then Keras' cache.
    """
    for folder in _cache_dirs(cache_dir):
        path = folder / spec.name
        if path.is_file() and verify_file(path, spec) is None:
            return path
    return None


def present_path(spec: FileSpec) -> Path | None:
    """A cached copy of ``spec`` judged by name and size alone (no hashing: for tables that
    must print fast; `cached_path` and `keras-vggres verify` check the hashes)."""
    for folder in _cache_dirs(None):
        path = folder / spec.name
        if path.is_file() and (spec.size is None or path.stat().st_size == spec.size):
            return path
    return None


def verify_file(path: str | os.PathLike, spec: FileSpec) -> str | None:
    """Describe how ``path`` differs from ``spec`` (size, md5, sha256, sha256 prefix); None if OK.

    Every hash the spec sets must match. The file is hashed in chunks, in a single pass. A path
    that is not a regular file (a directory, FIFO, device) is reported, never read.
    """
    try:
        with _fs.open_regular(path) as f:
            return check_open_file(f, spec)
    except FileNotFoundError:
        return f"{path} does not exist"
    except NotRegularFileError:
        return f"{path} is not a regular file ({_fs.describe(path)})"


def check_open_file(f, spec: FileSpec) -> str | None:
    """`verify_file` for an open regular file: size first (no need to hash), then every hash."""
    size = os.fstat(f.fileno()).st_size
    if spec.size is not None and size != spec.size:
        return f"size: expected {spec.size} bytes, got {size} bytes"
    digests = hash_stream(f, {algo for _, algo, _, _ in _wanted_hashes(spec)})
    return "; ".join(check_digests(spec, digests)) or None


def check_digests(spec: FileSpec, digests: dict[str, str]) -> list[str]:
    """Mismatches between ``spec``'s hashes and ``{"md5"|"sha256": hex}`` (a missing one too)."""
    problems = []
    for label, algo, want, prefix_only in _wanted_hashes(spec):
        got = digests.get(algo) or "nothing recorded"
        if not (got.startswith(want) if prefix_only else got == want):
            problems.append(f"{label}: expected {want}{'...' if prefix_only else ''}, got {got}")
    return problems


def fetch(spec: FileSpec, *, cache_dir: str | os.PathLike | None = None,
          quiet: bool | None = None) -> Path:
    """Return a verified local path for ``spec``, downloading it at most once across processes.

    Args:
        spec: the file to get: bare file name, origin URL, size and hashes.
        cache_dir: folder to cache into (only this folder is searched); default `cache_dir()`,
            searched together with Keras' cache.
        quiet: True hides the progress bar, False shows it; None shows it when stderr is a
            terminal and `KERAS_VGGRES_QUIET` is not set.

    Raises:
        WeightsUnavailableError: offline mode and no valid local copy (says what to put where).
        DownloadError: the transfer failed (HTTP status, network, timeout) after retries, or at
            once: more bytes than the size bound, too slow, a redirect to a non-http(s) URL, or
            (offline) a mirror entry that is not a regular file.
        IntegrityError: downloaded bytes failed verification twice.
        UnsafeCacheEntryError: the lock file is a symlink (or not a regular file), or the cache
            entry is a directory.
    """
    _check_spec(spec)
    hit = cached_path(spec, cache_dir)
    if hit is not None:
        return hit
    final = _cache_dirs(cache_dir)[0] / spec.name  # downloads go to the first folder searched
    offline = _env_flag("KERAS_VGGRES_OFFLINE")
    mirror = _mirror_location(spec, offline=offline)
    if offline and mirror is None:
        raise _unavailable(spec, final, mirror)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final) as locked:
        problem = verify_file(final, spec)
        if problem is None:
            return final  # another process finished it while we waited for the lock
        if os.path.isdir(final) and not os.path.islink(final):
            raise UnsafeCacheEntryError(
                errno.EISDIR, f"{final} is a directory where the weight file {spec.name} "
                "belongs; nothing was downloaded. Remove it and try again.", str(final))
        _tidy(final, problem, locked=locked)
        show = _show_progress(quiet)
        if mirror is not None and _from_mirror(spec, final, mirror, offline=offline, show=show):
            return final
        if offline:
            raise _unavailable(spec, final, mirror)
        return _from_origin(spec, final, show=show)


def _from_mirror(spec: FileSpec, final: Path, mirror: str | Path, *, offline: bool,
                 show: bool) -> bool:
    """Try the mirror copy; a miss or (online) a failure returns False so the origin is used."""
    try:
        problem = _download_once(mirror, spec, final, show)
    except OSError as exc:  # DownloadError, or a local mirror file missing or unreadable
        if isinstance(exc, FileNotFoundError) or getattr(exc, "status", None) in _MISSING_STATUS:
            log.info("%s is not on the mirror (%s); trying the origin.", spec.name, mirror)
            return False
        if offline:
            raise
        log.warning("Mirror copy %s failed (%s); trying the origin %s.", mirror, exc, spec.url)
        return False
    if problem is None:
        return True
    if offline:
        raise IntegrityError(f"Mirror copy {mirror} fails verification ({problem}); it was not "
                             f"copied to {final}. Replace it with the file from {spec.url}.")
    log.warning("Mirror copy %s fails verification (%s); trying the origin %s.",
                mirror, problem, spec.url)
    return False


def _from_origin(spec: FileSpec, final: Path, *, show: bool) -> Path:
    """Download from ``spec.url``; wrong bytes are fetched once more, then IntegrityError."""
    problems = []
    for _ in range(1 + INTEGRITY_RETRIES):
        problem = _download_once(spec.url, spec, final, show)
        if problem is None:
            return final
        problems.append(problem)
        log.warning("Downloaded %s but it fails verification (%s).", spec.url, problem)
    raise IntegrityError(
        f"{spec.url} was downloaded {len(problems)} times and no copy matches what {final} must "
        f"hold ({_expected(spec)}): {'; '.join(problems)}. The bad copies were discarded and "
        f"{final} was not written. The server may serve another file, or the hash may be wrong.")


def _download_once(source: str | Path, spec: FileSpec, final: Path, show: bool) -> str | None:
    """Fetch one copy to a unique temp file, verify and publish it; return the mismatch, if any."""
    try:
        with _atomic.replacing(final, fsync=True) as tmp:
            _stream_to_tmp(source, Path(tmp), final, show, _limits.size_bound(spec))
            problem = verify_file(tmp, spec)
            if problem is not None:
                raise _Rejected(problem)  # leaves the block: the temp is removed, not published
    except _Rejected as rejected:
        return str(rejected)
    return None


def _stream_to_tmp(source: str | Path, tmp: Path, final: Path, show: bool,
                   bound: _limits.SizeBound) -> None:
    """Copy a local mirror file, or stream a URL, into ``tmp``; at most ``bound.limit`` bytes."""
    if isinstance(source, Path):
        _copy_local(source, tmp, bound)
    else:
        _http.stream(source, tmp, target=final, show_progress=show, bound=bound)


def _copy_local(source: Path, tmp: Path, bound: _limits.SizeBound) -> None:
    """Copy a local mirror entry: a regular file only, never more than the size bound."""
    try:
        src = _fs.open_regular(source)
    except NotRegularFileError as exc:
        raise DownloadError(f"Refusing the mirror entry {source}: {exc}; only regular files "
                            "are copied.", url=str(source)) from None
    with src, _fs.open_new(tmp) as dst:
        size, copied = os.fstat(src.fileno()).st_size, 0
        if size > bound.limit:
            raise DownloadError(f"Refusing the mirror copy {source}: it is {size} bytes, more "
                                f"than the {bound.limit} allowed by {bound.rule}.",
                                url=str(source))
        while chunk := src.read(HASH_CHUNK):
            copied += len(chunk)
            if copied > bound.limit:
                raise DownloadError(f"Stopped copying the mirror copy {source}: it grew past the "
                                    f"{bound.limit} bytes allowed by {bound.rule}.",
                                    url=str(source))
            dst.write(chunk)


def _tidy(final: Path, problem: str, *, locked: bool) -> None:
    """Announce a corrupt cached copy; with the lock held, remove temp files of dead downloads."""
    if os.path.lexists(final):
        log.warning("Cached file %s is corrupt (%s); downloading it again.", final, problem)
    if locked:  # every live writer of this name holds the lock, so these are leftovers
        _fs.remove_temps(final)


def _unavailable(spec: FileSpec, final: Path, mirror: str | Path | None) -> WeightsUnavailableError:
    """The offline-mode error: which file, which folder to put it in, which URL to fetch."""
    problem = verify_file(final, spec) if final.exists() else None
    why = f"the cached copy is unusable ({problem})" if problem else "it is not in the cache"
    if isinstance(mirror, Path):
        why += f" nor on the mirror ({mirror} is missing)"
    return WeightsUnavailableError(
        f"Weight file {spec.name!r} is needed but {why}, and KERAS_VGGRES_OFFLINE is set, so "
        f"nothing is downloaded. Download {spec.url} and put it in the folder {final.parent} "
        f"(expected {_expected(spec)}), or set KERAS_VGGRES_MIRROR to a folder that holds it.")


def _check_spec(spec: FileSpec) -> None:
    """Refuse names that could escape the cache folder and files that cannot be verified."""
    name = spec.name
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"`spec.name` must be a bare file name; received spec.name={name!r}.")
    if not (spec.md5 or spec.sha256 or spec.sha256_prefix):
        raise ValueError(f"`spec` for {name!r} sets none of md5, sha256, sha256_prefix; "
                         "refusing a file that cannot be verified.")
    if urlsplit(spec.url).scheme.lower() not in ("http", "https"):
        raise ValueError(f"`spec.url` must be an http(s) URL; received spec.url={spec.url!r}.")


def _mirror_location(spec: FileSpec, *, offline: bool) -> str | Path | None:
    """Where the mirror keeps ``spec``: a URL, a local path, or None (unset, or a URL offline)."""
    base = os.environ.get("KERAS_VGGRES_MIRROR", "").strip()
    if not base:
        return None
    parts = urlsplit(base)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return None if offline else f"{base.rstrip('/')}/{quote(spec.name)}"
    if scheme == "file":
        return Path(url2pathname(parts.path)) / spec.name
    if "://" in base:
        raise ValueError("KERAS_VGGRES_MIRROR must be an http(s) URL, a file:// URL or a "
                         f"directory; received KERAS_VGGRES_MIRROR={base!r}.")
    return Path(base).expanduser() / spec.name


def _wanted_hashes(spec: FileSpec) -> list[tuple[str, str, str, bool]]:
    """(label, hashlib name, expected hex, prefix only) for every hash the spec sets."""
    wanted = [("md5", "md5", spec.md5, False), ("sha256", "sha256", spec.sha256, False),
              ("sha256 prefix", "sha256", spec.sha256_prefix, True)]
    return [(label, algo, want.lower(), prefix) for label, algo, want, prefix in wanted if want]


def hash_file(path: str | os.PathLike, algos=("md5", "sha256")) -> dict[str, str]:
    """Hex digests of the regular file ``path`` for each algorithm, reading it once in chunks."""
    with _fs.open_regular(path) as f:
        return hash_stream(f, algos)


def hash_stream(f, algos) -> dict[str, str]:
    """Hex digests of what is left to read in the binary file object ``f``."""
    hashers = {algo: hashlib.new(algo) for algo in algos}
    while chunk := f.read(HASH_CHUNK):
        for hasher in hashers.values():
            hasher.update(chunk)
    return {algo: hasher.hexdigest() for algo, hasher in hashers.items()}


def _expected(spec: FileSpec) -> str:
    """The spec's size and hashes as one phrase, for error messages."""
    parts = [f"{spec.size} bytes"] if spec.size is not None else []
    parts += [f"{label} {want}" for label, _, want, _ in _wanted_hashes(spec)]
    return ", ".join(parts)


def _keras_models_dir() -> Path:
    """Keras' ``get_file`` cache: ``$KERAS_HOME/models``, else ``~/.keras/models``."""
    return Path(os.environ.get("KERAS_HOME") or "~/.keras").expanduser() / "models"


def _cache_dirs(explicit: str | os.PathLike | None) -> list[Path]:
    """Folders searched for a valid copy, the first one written: the explicit one alone, else
    ours then Keras'."""
    if explicit is not None:
        return [Path(explicit).expanduser()]
    return list(dict.fromkeys([cache_dir(), _keras_models_dir()]))


def _env_flag(name: str) -> bool:
    """True when an environment switch is set to 1, true or yes."""
    return os.environ.get(name, "").strip().lower() in _TRUE


def _show_progress(quiet: bool | None) -> bool:
    """Whether to draw the progress bar: explicit ``quiet`` wins, then the environment
    (`KERAS_VGGRES_QUIET`, `CI`), then whether stderr is a terminal or a notebook."""
    if quiet is not None:
        return not quiet
    return _progress.interactive(sys.stderr)
