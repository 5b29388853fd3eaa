"""The description of one downloadable weight file, shared by the manifest and the downloader."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FileSpec:
    """One weight file: where it lives, what it must be, and what it is called on disk.

    At least one of ``md5``, ``sha256`` or ``sha256_prefix`` should be set; ``size`` is checked
    when known. ``name`` is the bare file name used in caches and mirrors. ``size_mib`` is a
    published, rounded size (torchvision's); it only bounds a download when ``size`` is unknown.
    """

    name: str
    url: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    size_mib: float | None = None
