"""Stream one HTTP(S) URL into a local file: timeouts, retries with backoff, Range resume, progress.

Bounded: the body may not exceed the caller's size bound (checked against Content-Length /
Content-Range up front and against every chunk, so a server without Content-Length is stopped
too), must keep a minimum average rate (see ``_limits``), and redirects are followed only to
http(s) URLs. The temp file is never opened through a symbolic link (see ``_fs``).

Used only by ``download.py``, which owns temp names, verification and publishing. Stdlib only.
"""

from __future__ import annotations

import http.client
import logging
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from keras_vggres._progress import Progress
from urllib.parse import urljoin, urlsplit

from keras_vggres.weights import _fs, _limits
from keras_vggres.weights._limits import SizeBound

log = logging.getLogger("keras_vggres.weights.download")

TIMEOUT = 30.0  # seconds to connect and for each socket read (a stall, not the whole transfer)
RETRIES = 3  # extra attempts after a transient failure: 5xx, reset, timeout, body cut short
BACKOFF_BASE = 1.0  # seconds before the first retry; doubles for each further one
CHUNK_SIZE = 256 * 1024
USER_AGENT = "keras_vggres (python urllib)"
_RETRY_STATUS = (408, 429)  # retried besides every 5xx; any other 4xx is final
REDIRECT_SCHEMES = ("http", "https")


class DownloadError(OSError):
    """The transfer failed (HTTP status, network, timeout, body cut short) after any retries."""

    def __init__(self, message: str, *, url: str, status: int | None = None):
        super().__init__(message)
        self.url = url
        self.status = status


class _Retry(Exception):
    """A failure worth another attempt; ``restart`` discards the bytes already received."""

    def __init__(self, message: str, *, restart: bool = False):
        super().__init__(message)
        self.restart = restart


def timeout() -> float:
    """The socket timeout; KERAS_VGGRES_TIMEOUT, read at call time, lets slow links raise it."""
    raw = os.environ.get("KERAS_VGGRES_TIMEOUT", "").strip()
    if not raw:
        return TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError("KERAS_VGGRES_TIMEOUT must be a positive number of seconds; "
                         f"received KERAS_VGGRES_TIMEOUT={raw!r}.")
    return value


def stream(url: str, dest: Path, *, target: Path, show_progress: bool, bound: SizeBound) -> int:
    """Fill ``dest`` with the body of ``url``, retrying transient failures; return its size.

    ``target`` is the final cache path, named in messages only. More than ``bound.limit``
    bytes, a refused redirect or a too slow transfer raise `DownloadError` at once (no retry).
    """
    bar = _Progress(target.name, enabled=show_progress)
    failures = []
    try:
        for attempt in range(RETRIES + 1):
            if attempt:
                time.sleep(BACKOFF_BASE * 2 ** (attempt - 1))
            try:
                return _attempt(url, dest, target, bar, bound)
            except _Retry as exc:
                failures.append(f"attempt {attempt + 1}: {exc}")
                log.info("Download of %s failed (%s); %d retries left.", url, exc,
                         RETRIES - attempt)
                if exc.restart:
                    dest.unlink(missing_ok=True)
    finally:
        bar.close()
    raise DownloadError(
        f"Could not download {url} to {target} after {RETRIES + 1} attempts; expected HTTP 200/206 "
        f"with the complete body, got: {'; '.join(failures)}.", url=url)


def _attempt(url: str, dest: Path, target: Path, bar: _Progress, bound: SizeBound) -> int:
    """One GET: append to ``dest`` on 206, start over on 200; raise _Retry when worth retrying."""
    have = _fs.regular_size(dest)
    with _open(url, have, target) as resp:
        start, total = _resume_point(resp, have)
        if total is not None and total > bound.limit:
            raise DownloadError(
                f"Refusing to download {url} to {target}: the server announces {total} bytes, "
                f"more than the {bound.limit} allowed by {bound.rule}; nothing was kept.", url=url)
        bar.start(start, total)
        with _fs.open_new(dest, append=bool(start)) as out:
            got = _copy_body(resp, out, bar, _Guard(url, target, start, bound))
    done = start + got
    if total is not None and done != total:
        raise _Retry(f"body cut short: expected {total} bytes, got {done}")
    return done


def _open(url: str, have: int, target: Path):
    """Send the GET, asking only for the tail when a prefix is already on disk."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.build_opener(_HttpOnlyRedirects).open(request, timeout=timeout())
    except DownloadError as exc:  # a refused redirect: final
        raise DownloadError(f"Could not download {url} to {target}: {exc}", url=url,
                            status=exc.status) from None
    except urllib.error.HTTPError as exc:
        exc.close()
        got = f"HTTP {exc.code} {exc.reason}"
        if exc.code == 416 and have:
            raise _Retry(f"{got} for Range bytes={have}-", restart=True) from None
        if exc.code >= 500 or exc.code in _RETRY_STATUS:
            raise _Retry(got) from None
        raise DownloadError(f"Could not download {url} to {target}: expected HTTP 200, got {got}.",
                            url=url, status=exc.code) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            raise DownloadError(f"Could not download {url} to {target}: TLS certificate rejected "
                                f"({exc.reason}).", url=url) from exc
        raise _Retry(f"cannot connect ({exc.reason})") from exc
    except (OSError, http.client.HTTPException) as exc:  # timeout or reset awaiting headers
        raise _Retry(f"no response ({_describe(exc)})") from exc


def _resume_point(resp, have: int) -> tuple[int, int | None]:
    """Where this body starts in the file and the file's total size (None when unknown)."""
    length = resp.headers.get("Content-Length", "")
    length = int(length) if length.strip().isdigit() else None
    if resp.status != 206:
        if have:
            log.info("Server ignored Range bytes=%d-; restarting from byte 0.", have)
        return 0, length
    first, total = _content_range(resp.headers.get("Content-Range", ""))
    if first != have:
        raise _Retry(f"asked for bytes {have}-, got Content-Range "
                     f"{resp.headers.get('Content-Range')!r}", restart=True)
    if total is None and length is not None:
        total = have + length
    return have, total


def _content_range(value: str) -> tuple[int | None, int | None]:
    """Parse ``bytes FIRST-LAST/TOTAL`` (TOTAL may be ``*``); (None, None) when malformed."""
    unit, _, spec = value.strip().partition(" ")
    span, _, total = spec.partition("/")
    first = span.partition("-")[0]
    if unit.lower() != "bytes" or not first.isdigit():
        return None, None
    return int(first), int(total) if total.isdigit() else None


def _copy_body(resp, out, bar: _Progress, guard: _Guard) -> int:
    """Copy the body in chunks; a network failure mid-body keeps what arrived (for Range resume).

    A chunk that would take the file past the size bound is not written: the download fails.
    """
    got = 0
    while True:
        try:
            chunk = resp.read1(CHUNK_SIZE)  # returns what has arrived: kept on a stall
        except (OSError, http.client.HTTPException) as exc:  # reset, timeout, IncompleteRead
            raise _Retry(f"connection lost after {got} body bytes ({_describe(exc)})") from exc
        if not chunk:
            return got
        guard.check(got, len(chunk))
        out.write(chunk)
        got += len(chunk)
        bar.advance(len(chunk))


class _Guard:
    """Stops a body that grows past the size bound or arrives slower than the minimum rate."""

    def __init__(self, url: str, target: Path, start: int, bound: SizeBound):
        self.url, self.target, self.start, self.bound = url, target, start, bound
        self.rule = _limits.rate_rule()
        self.mark_time, self.mark_bytes = time.monotonic(), 0

    def check(self, got: int, incoming: int) -> None:
        """Called before writing ``incoming`` more bytes after ``got`` body bytes."""
        if self.start + got + incoming > self.bound.limit:
            raise DownloadError(
                f"Stopped downloading {self.url} to {self.target}: the body goes past the "
                f"{self.bound.limit} bytes allowed by {self.bound.rule} (more than "
                f"{self.start + got} bytes received); the partial file was discarded.",
                url=self.url)
        now = time.monotonic()
        span = now - self.mark_time
        if not self.rule.min_rate or span < self.rule.window:
            return
        window_bytes = got + incoming - self.mark_bytes
        if window_bytes < self.rule.min_rate * span:
            raise DownloadError(
                f"Download of {self.url} to {self.target} is too slow: {window_bytes} bytes in "
                f"the last {span:.1f} s ({window_bytes / span:.0f} bytes/s), below the minimum "
                f"average of {self.rule.min_rate:g} bytes/s over {self.rule.window:g} s "
                f"({_limits.MIN_RATE_ENV}, {_limits.RATE_WINDOW_ENV}); stopped after "
                f"{self.start + got} bytes. Set {_limits.MIN_RATE_ENV}=0 to wait regardless.",
                url=self.url)
        self.mark_time, self.mark_bytes = now, got + incoming


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only; anything else (ftp://, file://...) is refused, named."""

    def http_error_302(self, req, fp, code, msg, headers):
        where = headers.get("location") or headers.get("uri")
        if where:
            new = urljoin(req.full_url, where)
            if urlsplit(new).scheme.lower() not in REDIRECT_SCHEMES:
                fp.close()
                raise DownloadError(
                    f"refused a redirect: {req.full_url} answered HTTP {code} pointing to "
                    f"{new!r}, which is not an http(s) URL (only {REDIRECT_SCHEMES} redirects "
                    "are followed).", url=req.full_url, status=code)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _describe(exc: BaseException) -> str:
    """A short 'Type: message' for error texts (some socket errors have an empty str())."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _Progress(label: str, *, enabled: bool) -> Progress:
    """The download bar on stderr: MiB done / total, percent and rate."""
    return Progress(label, verbose=1 if enabled else 0, unit="MiB", scale=1024 * 1024,
                    stream=sys.stderr)
