"""Hostile sources: bodies past the size bound, device mirrors, slow drips, non-http redirects.

Every server here listens on 127.0.0.1 and is started by the test; nothing else is contacted.
Each attack asserts the outcome (which error, naming what), that it ends fast, and that no more
bytes than allowed ever reached the disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from keras_vggres import _atomic
from keras_vggres.weights import _limits
from keras_vggres.weights.download import DownloadError, fetch
from keras_vggres.weights.spec import FileSpec
from tests.support.http_server import FaultyServer

NAME = "bomb_weights.h5"
MIB = 1024 * 1024


class HostileServer:
    """127.0.0.1 server: /endless (no Content-Length, never ends), /drip (1 byte per 0.05 s),
    /to-<scheme> (302 to a non-http URL)."""

    def __init__(self):
        self.stop = threading.Event()
        self.sent = {}
        self.hits = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        self._httpd.handle_error = lambda request, address: None
        threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True).start()

    def url(self, path):
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def close(self):
        self.stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # no Content-Length: the body ends when the connection closes
    LOCATIONS = {"/to-ftp": "ftp://127.0.0.1:9/x.h5", "/to-file": "file:///etc/passwd",
                 "/to-data": "data:,hello"}

    def log_message(self, *args):
        pass

    def do_GET(self):
        owner = self.server.owner
        owner.hits.append(self.path)
        if self.path in self.LOCATIONS:
            self.send_response(302)
            self.send_header("Location", self.LOCATIONS[self.path])
            self.end_headers()
            return
        self.send_response(200)
        if self.path == "/drip":
            self.send_header("Content-Length", "100000")
        self.end_headers()
        chunk, delay = (b"x", 0.05) if self.path == "/drip" else (b"\0" * 65536, 0.0)
        sent = 0
        try:
            while sent < 64 * MIB and not owner.stop.is_set():
                self.wfile.write(chunk)
                self.wfile.flush()
                sent += len(chunk)
                owner.sent[self.path] = sent
                if delay:
                    owner.stop.wait(delay)
        except (BrokenPipeError, ConnectionResetError):
            pass


pytestmark = pytest.mark.usefixtures("online_downloads")


@pytest.fixture
def hostile():
    srv = HostileServer()
    yield srv
    srv.close()


@pytest.fixture
def written(monkeypatch):
    """Sizes of the temp files discarded by the atomic writer (what reached the disk)."""
    sizes = []
    remove = _atomic._remove

    def recording(path):
        if os.path.lexists(path):
            sizes.append(os.lstat(path).st_size)
        remove(path)

    monkeypatch.setattr(_atomic, "_remove", recording)
    return sizes


def spec_for(url, *, size=None, size_mib=None, body=b"the real file"):
    return FileSpec(NAME, url, size=size, size_mib=size_mib, md5=hashlib.md5(body).hexdigest())


def only_lock_left(folder):
    names = set(os.listdir(folder)) if folder.exists() else set()
    assert names <= {NAME + ".lock"}, names


# --- size bound --------------------------------------------------------------------------------

def test_no_content_length_stops_at_the_manifest_size(hostile, tmp_path, written):
    url = hostile.url("/endless")
    started = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch(spec_for(url, size=1000), cache_dir=tmp_path, quiet=True)
    text = str(info.value)
    assert url in text and "1000 bytes allowed" in text and "manifest size" in text
    assert time.monotonic() - started < 5
    assert written and max(written) <= 1000
    only_lock_left(tmp_path)


@pytest.mark.parametrize("size_mib, env, limit, rule", [
    (0.5, None, int(1.5 * MIB), "published size"),
    (None, "1", MIB, "KERAS_VGGRES_MAX_DOWNLOAD_MIB=1 MiB"),
], ids=["size_mib", "ceiling"])
def test_unknown_size_is_bounded_too(hostile, tmp_path, written, monkeypatch, size_mib, env,
                                     limit, rule):
    if env:
        monkeypatch.setenv(_limits.MAX_MIB_ENV, env)
    with pytest.raises(DownloadError, match=rule) as info:
        fetch(spec_for(hostile.url("/endless"), size_mib=size_mib), cache_dir=tmp_path,
              quiet=True)
    assert f"{limit} bytes allowed" in str(info.value)
    assert max(written) <= limit
    only_lock_left(tmp_path)


def test_default_ceiling_and_bad_setting(monkeypatch):
    spec = FileSpec(NAME, "http://127.0.0.1/x", md5="0" * 32)
    assert _limits.size_bound(spec).limit == _limits.DEFAULT_MAX_DOWNLOAD_MIB * MIB
    monkeypatch.setenv(_limits.MAX_MIB_ENV, "lots")
    with pytest.raises(ValueError, match="KERAS_VGGRES_MAX_DOWNLOAD_MIB='lots'"):
        _limits.size_bound(spec)


def test_announced_length_over_the_bound_is_refused_before_the_body(tmp_path, written):
    server = FaultyServer()
    try:
        body = bytes(300 * 1024)
        url = server.add("/big.h5", body)
        with pytest.raises(DownloadError, match=f"announces {len(body)} bytes") as info:
            fetch(spec_for(url, size=1000), cache_dir=tmp_path, quiet=True)
        assert url in str(info.value)
        assert len(server.gets("/big.h5")) == 1  # final: not retried
    finally:
        server.close()
    assert max(written, default=0) == 0
    only_lock_left(tmp_path)


# --- local mirror entries that are not regular files ---------------------------------------------

@pytest.mark.parametrize("offline", [True, False], ids=["offline", "online"])
@pytest.mark.parametrize("kind", ["dev-zero-link", "fifo", "directory"])
def test_mirror_entry_must_be_a_regular_file(tmp_path, monkeypatch, written, caplog, kind,
                                             offline):
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    entry = mirror / NAME
    {"dev-zero-link": lambda: entry.symlink_to("/dev/zero"), "fifo": lambda: os.mkfifo(entry),
     "directory": entry.mkdir}[kind]()
    monkeypatch.setenv("KERAS_VGGRES_MIRROR", str(mirror))
    server = FaultyServer()
    body = b"the real file"
    url = server.add("/" + NAME, body)
    if offline:
        monkeypatch.setenv("KERAS_VGGRES_OFFLINE", "1")
    started = time.monotonic()
    try:
        if offline:
            with pytest.raises(OSError, match="Refusing the mirror entry") as info:
                fetch(spec_for(url, size_mib=1.0), cache_dir=cache, quiet=True)
            assert str(entry) in str(info.value) and "not a regular file" in str(info.value)
            only_lock_left(cache)
        else:
            with caplog.at_level(logging.WARNING, logger="keras_vggres"):
                path = fetch(spec_for(url, size_mib=1.0), cache_dir=cache, quiet=True)
            assert path.read_bytes() == body and "Refusing the mirror entry" in caplog.text
            assert len(server.gets("/" + NAME)) == 1
    finally:
        server.close()
    assert time.monotonic() - started < 5
    assert max(written, default=0) == 0


def test_oversized_mirror_file_is_refused_before_copying(tmp_path, monkeypatch, written):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / NAME).write_bytes(bytes(3 * MIB))
    monkeypatch.setenv("KERAS_VGGRES_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("KERAS_VGGRES_OFFLINE", "1")
    with pytest.raises(OSError, match=f"it is {3 * MIB} bytes, more than the {2 * MIB}"):
        fetch(spec_for("http://127.0.0.1:9/" + NAME, size_mib=1.0), cache_dir=tmp_path / "c",
              quiet=True)
    assert max(written, default=0) == 0


# --- slow drip -----------------------------------------------------------------------------------

def test_slow_drip_fails_as_too_slow(hostile, tmp_path, monkeypatch):
    monkeypatch.setenv(_limits.MIN_RATE_ENV, "1000")
    monkeypatch.setenv(_limits.RATE_WINDOW_ENV, "1")
    url = hostile.url("/drip")
    started = time.monotonic()
    with pytest.raises(DownloadError, match="too slow") as info:
        fetch(spec_for(url), cache_dir=tmp_path, quiet=True)
    elapsed = time.monotonic() - started
    text = str(info.value)
    assert url in text and "1000 bytes/s" in text and "KERAS_VGGRES_MIN_RATE" in text
    assert 1 <= elapsed < 5
    assert hostile.hits.count("/drip") == 1  # not retried
    only_lock_left(tmp_path)


def test_rate_check_can_be_switched_off_and_bad_values_are_named(monkeypatch):
    monkeypatch.setenv(_limits.MIN_RATE_ENV, "0")
    assert _limits.rate_rule().min_rate == 0
    monkeypatch.setenv(_limits.RATE_WINDOW_ENV, "0")
    with pytest.raises(ValueError, match="KERAS_VGGRES_RATE_WINDOW='0'"):
        _limits.rate_rule()


# --- redirects -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path, where", [("/to-ftp", "ftp://127.0.0.1:9/x.h5"),
                                         ("/to-file", "file:///etc/passwd"),
                                         ("/to-data", "data:,hello")])
def test_redirect_to_a_non_http_url_is_refused(hostile, tmp_path, path, where):
    url = hostile.url(path)
    with pytest.raises(DownloadError, match="refused a redirect") as info:
        fetch(spec_for(url), cache_dir=tmp_path, quiet=True)
    text = str(info.value)
    assert url in text and repr(where) in text and info.value.status == 302
    assert hostile.hits == [path]  # neither retried nor followed
    only_lock_left(tmp_path)


def test_every_manifest_file_has_a_tight_bound():
    from keras_vggres.weights import manifest

    for entry in manifest.load_manifest().values():
        for record in entry.tags.values():
            for spec in record.files.values():
                limit = _limits.size_bound(spec).limit
                if spec.size is not None:
                    assert limit == spec.size, spec.name
                elif record.source == "torchvision":  # published MiB, rounded: + 1 MiB margin
                    assert spec.size_mib * MIB < limit <= (spec.size_mib + 1) * MIB + 1, spec.name
                else:
                    assert limit == _limits.DEFAULT_MAX_DOWNLOAD_MIB * MIB, spec.name
