"""Converted `.pth` caches: bound to their verified source by a sidecar, checked before loading.

A torchvision file ``<stem>.pth`` is converted once into ``<stem>.<model>[_notop].keras_vggres.h5``
beside it. Next to that file a JSON sidecar ``<converted>.json`` records what it is::

    {"format": "keras_vggres.converted/1",
     "file":   {"name": "<converted name>", "size": <bytes>, "sha256": "<hex>"},
     "source": {"name": "<stem>.pth", "size": <bytes>, "md5": "<hex>", "sha256": "<hex>"}}

A converted file is valid when its size and sha256 match the sidecar, its name derives from the
recorded source name, and the recorded source digests satisfy the source's manifest spec (the
same test ``fetch`` applies to the ``.pth``). Building holds the converted file's own lock
(``<converted>.lock``, see ``_fs``): the HDF5 is published atomically first, then the sidecar, so
an interrupted build leaves a pair that fails the check. `ensure_converted` checks before every
load and rebuilds a mismatching file from the verified source, with a warning.

Imports neither Keras nor h5py (the caller passes the converter).
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Callable, Mapping

from keras_vggres import _atomic
from keras_vggres.weights import _fs, download
from keras_vggres.weights.download import IntegrityError, NotRegularFileError
from keras_vggres.weights.spec import FileSpec

__all__ = ["CONVERTED_SUFFIX", "SIDECAR_SUFFIX", "check_converted", "check_converted_file",
           "ensure_converted", "sidecar_path"]

log = logging.getLogger("keras_vggres.weights.download")

CONVERTED_SUFFIX = ".keras_vggres.h5"
SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = "keras_vggres.converted/1"
SIDECAR_MAX_BYTES = 64 * 1024
_H5_SUFFIX = ".h5"  # kept at the end of temp names: writers pick the format by suffix


def sidecar_path(converted: str | os.PathLike) -> Path:
    converted = Path(converted)
    return converted.with_name(converted.name + SIDECAR_SUFFIX)


def ensure_converted(source: Path, spec: FileSpec, converted: Path,
                     build: Callable[[Path], object]) -> Path:
    """Return ``converted`` once it is a valid conversion of ``source`` (verified against ``spec``).

    Args:
        source: the verified `.pth` (as returned by ``fetch``).
        spec: the source's manifest spec.
        converted: where the conversion is cached.
        build: writes the conversion of ``source`` to the path it is given.
    """
    problem = check_converted(converted, {spec.name: spec}, require_source=True)
    if problem is None:
        return converted
    with _fs.lock(converted) as locked:
        problem = check_converted(converted, {spec.name: spec}, require_source=True)
        if problem is None:
            return converted  # another process rebuilt it while we waited
        if os.path.lexists(converted):
            log.warning("Converted weights %s fail verification (%s); rebuilding them from the "
                        "verified source %s.", converted, problem, source)
        if locked:
            _fs.remove_temps(converted, _H5_SUFFIX)
            _fs.remove_temps(sidecar_path(converted))
        _build(source, spec, converted, build)
    return converted


def _build(source: Path, spec: FileSpec, converted: Path, build: Callable[[Path], object]) -> None:
    """Convert under the lock: source re-checked, HDF5 published, then its sidecar."""
    if os.path.isdir(converted) and not os.path.islink(converted):
        raise _fs.UnsafeCacheEntryError(
            errno.EISDIR, f"{converted} is a directory where converted weights belong; remove it "
            "and try again.", str(converted))
    source_digests = download.hash_file(source)
    problems = download.check_digests(spec, source_digests)
    if problems:
        raise IntegrityError(f"The source {source} no longer matches its spec "
                             f"({'; '.join(problems)}); it was not converted.")
    source_record = {"name": spec.name, "size": os.stat(source).st_size, **source_digests}
    with _atomic.replacing(converted, suffix=_H5_SUFFIX, fsync=True) as tmp:
        build(Path(tmp))
        record = {"format": SIDECAR_FORMAT,
                  "file": {"name": converted.name, "size": os.stat(tmp).st_size,
                           "sha256": download.hash_file(tmp, ("sha256",))["sha256"]},
                  "source": source_record}
    _atomic.write_bytes(sidecar_path(converted), json.dumps(record, indent=1).encode(),
                        fsync=True)


def check_converted(converted: Path, specs: Mapping[str, FileSpec], *,
                    require_source: bool = False) -> str | None:
    """How ``converted`` fails its sidecar or its source's spec (``specs`` by name); None if OK."""
    try:
        with _fs.open_regular(converted) as f:
            return check_converted_file(f, converted, specs, require_source=require_source)
    except FileNotFoundError:
        return f"{converted} does not exist"
    except NotRegularFileError:
        return f"{converted} is not a regular file ({_fs.describe(converted)})"


def check_converted_file(f, converted: Path, specs: Mapping[str, FileSpec], *,
                         require_source: bool = False) -> str | None:
    """`check_converted` for an already opened regular file ``f``."""
    record, problem = _read_sidecar(converted)
    if problem:
        return problem
    mine, source = record["file"], record["source"]
    size = os.fstat(f.fileno()).st_size
    if mine["name"] != converted.name:
        return f"its sidecar describes {mine['name']!r}, not {converted.name!r}"
    if size != mine["size"]:
        return f"size: expected {mine['size']} bytes (recorded in its sidecar), got {size} bytes"
    got = download.hash_stream(f, ("sha256",))["sha256"]
    if got != mine["sha256"]:
        return f"sha256: expected {mine['sha256']} (recorded in its sidecar), got {got}"
    if not converted.name.startswith(Path(source["name"]).stem + "."):
        return f"its sidecar says it was made from {source['name']!r}, not from its own source"
    spec = specs.get(source["name"])
    if spec is None:
        return f"its source {source['name']!r} is not known" if require_source else None
    problems = download.check_digests(spec, source)
    if spec.size is not None and source["size"] != spec.size:
        problems.insert(0, f"size: expected {spec.size} bytes, got {source['size']} bytes")
    return ("made from a source that does not match " + spec.name + ": " + "; ".join(problems)
            if problems else None)


def _read_sidecar(converted: Path) -> tuple[dict | None, str | None]:
    """The validated sidecar of ``converted``, or why there is none usable."""
    path = sidecar_path(converted)
    try:
        with _fs.open_regular(path) as f:
            raw = f.read(SIDECAR_MAX_BYTES + 1)
    except FileNotFoundError:
        return None, f"its sidecar {path} is missing"
    except OSError as exc:
        return None, f"its sidecar {path} is unusable ({exc})"
    try:
        record = json.loads(raw) if len(raw) <= SIDECAR_MAX_BYTES else None
    except ValueError:
        record = None
    if not _valid_record(record):
        return None, f"its sidecar {path} is not a valid {SIDECAR_FORMAT} record"
    return record, None


def _valid_record(record) -> bool:
    def fields(part, names):
        return isinstance(part, dict) and all(k in part for k in names)

    return (isinstance(record, dict) and record.get("format") == SIDECAR_FORMAT
            and fields(record.get("file"), ("name", "size", "sha256"))
            and fields(record.get("source"), ("name", "size", "md5", "sha256"))
            and all(isinstance(record[p]["size"], int) for p in ("file", "source"))
            and all(isinstance(record[p][k], str) for p, k in (
                ("file", "name"), ("file", "sha256"), ("source", "name"), ("source", "md5"),
                ("source", "sha256"))))
