"""The downloader against local 127.0.0.1 servers with injected faults: outcome, message, debris."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from keras_vggres.weights import _http, download
from keras_vggres.weights.download import (DownloadError, IntegrityError, WeightsUnavailableError,
                                           cache_dir, cached_path, fetch, verify_file)
from keras_vggres.weights.spec import FileSpec
from tests.support.http_server import FaultyServer

NAME = "weights_tf_dim_ordering_tf_kernels.h5"
PATH = "/models/" + NAME


pytestmark = pytest.mark.usefixtures("online_downloads")


@pytest.fixture
def mirror_server():
    srv = FaultyServer()
    yield srv
    srv.close()


@pytest.fixture
def body():
    return random.Random(1234).randbytes(300 * 1024)


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "cache"


def make_spec(url, body, *, size=True, md5=True, sha256=False, sha256_prefix=None):
    return FileSpec(NAME, url, size=len(body) if size else None,
                    md5=hashlib.md5(body).hexdigest() if md5 else None,
                    sha256=hashlib.sha256(body).hexdigest() if sha256 else None,
                    sha256_prefix=sha256_prefix)


def assert_clean(folder: Path, *, published: bytes | None):
    """Only the final file (with exactly ``published``) and the lock file may remain."""
    names = set(os.listdir(folder)) if folder.exists() else set()
    assert names <= {NAME, NAME + ".lock"}, names
    if published is None:
        assert NAME not in names
    else:
        assert (folder / NAME).read_bytes() == published


# --- happy path and cache -------------------------------------------------------------------------

def test_download_verifies_and_publishes(server, body, folder):
    spec = make_spec(server.add(PATH, body), body, sha256=True)
    path = fetch(spec, cache_dir=folder, quiet=True)
    assert path == folder / NAME
    assert_clean(folder, published=body)
    assert fetch(spec, cache_dir=folder, quiet=True) == path  # second call: cache, no request
    assert len(server.gets(PATH)) == 1
    assert cached_path(spec, folder) == path and verify_file(path, spec) is None


def test_reuses_file_in_keras_home_without_network(server, body, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    (tmp_path / "kh" / "models").mkdir(parents=True)
    (tmp_path / "kh" / "models" / NAME).write_bytes(body)
    spec = make_spec(server.add(PATH, body), body)
    assert cache_dir() == tmp_path / "kh" / "models"
    assert fetch(spec) == tmp_path / "kh" / "models" / NAME
    monkeypatch.setenv("KERAS_VGGRES_HOME", str(tmp_path / "ours"))  # ours empty: Keras' still used
    assert fetch(spec) == tmp_path / "kh" / "models" / NAME
    assert server.requests == []


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert cache_dir() == tmp_path / "kh" / "models"
    monkeypatch.setenv("KERAS_VGGRES_HOME", str(tmp_path / "ours"))
    assert cache_dir() == tmp_path / "ours"
    monkeypatch.delenv("KERAS_VGGRES_HOME")
    monkeypatch.delenv("KERAS_HOME")
    assert cache_dir() == Path("~/.keras/models").expanduser()


def test_corrupt_cached_file_is_replaced_with_one_request(server, body, folder, caplog):
    folder.mkdir()
    (folder / NAME).write_bytes(body[:-1] + b"!")
    spec = make_spec(server.add(PATH, body), body)
    assert cached_path(spec, folder) is None
    with caplog.at_level(logging.WARNING, logger="keras_vggres"):
        fetch(spec, cache_dir=folder, quiet=True)
    assert "corrupt" in caplog.text and str(folder / NAME) in caplog.text
    assert len(server.gets(PATH)) == 1
    assert_clean(folder, published=body)


def test_stale_temp_files_are_swept(server, body, folder):
    folder.mkdir()
    (folder / f"{NAME}.deadbeef.incomplete").write_bytes(b"left by a killed process")
    fetch(make_spec(server.add(PATH, body), body), cache_dir=folder, quiet=True)
    assert_clean(folder, published=body)


# --- fault matrix ---------------------------------------------------------------------------------

def test_404_fails_at_once_with_a_clear_message(server, body, folder):
    url = server.add(PATH, body, always="404")
    with pytest.raises(DownloadError) as info:
        fetch(make_spec(url, body), cache_dir=folder, quiet=True)
    text = str(info.value)
    assert url in text and str(folder / NAME) in text and "expected HTTP 200, got HTTP 404" in text
    assert info.value.status == 404 and isinstance(info.value, OSError)
    assert len(server.gets(PATH)) == 1  # 4xx is not retried
    assert_clean(folder, published=None)


def test_500_then_ok_is_retried(server, body, folder):
    fetch(make_spec(server.add(PATH, body, faults=["500", "500"]), body), cache_dir=folder,
          quiet=True)
    assert len(server.gets(PATH)) == 3
    assert_clean(folder, published=body)


def test_500_forever_gives_up_after_retries(server, body, folder):
    url = server.add(PATH, body, always="500")
    with pytest.raises(DownloadError, match="500") as info:
        fetch(make_spec(url, body), cache_dir=folder, quiet=True)
    assert url in str(info.value) and "4 attempts" in str(info.value)
    assert len(server.gets(PATH)) == _http.RETRIES + 1
    assert_clean(folder, published=None)


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_cut_body_is_resumed_or_restarted(server, body, folder, ranges):
    spec = make_spec(server.add(PATH, body, faults=["cut"], ranges=ranges), body)
    fetch(spec, cache_dir=folder, quiet=True)
    first, second = server.gets(PATH)
    assert first.range is None and second.range == f"bytes={len(body) // 2}-"
    assert_clean(folder, published=body)  # 206 appended, or 200 restarted from zero


def test_connection_reset_mid_body_is_retried(server, body, folder):
    fetch(make_spec(server.add(PATH, body, faults=["reset"]), body), cache_dir=folder, quiet=True)
    assert len(server.gets(PATH)) == 2
    assert_clean(folder, published=body)


def test_body_cut_every_time_is_an_error(server, body, folder):
    url = server.add(PATH, body, always="cut", ranges=False)
    with pytest.raises(DownloadError) as info:
        fetch(make_spec(url, body), cache_dir=folder, quiet=True)
    text = str(info.value)
    assert url in text and f"expected {len(body)} bytes, got {len(body) // 2}" in text
    assert_clean(folder, published=None)


def test_stalled_server_times_out(server, body, folder, monkeypatch):
    monkeypatch.setenv("KERAS_VGGRES_TIMEOUT", "0.2")
    monkeypatch.setattr(_http, "RETRIES", 1)
    url = server.add(PATH, body, always="stall")
    started = time.monotonic()
    with pytest.raises(DownloadError, match="timed out") as info:
        fetch(make_spec(url, body), cache_dir=folder, quiet=True)
    assert time.monotonic() - started < 5
    assert url in str(info.value) and str(folder / NAME) in str(info.value)
    assert len(server.gets(PATH)) == 2
    assert server.gets(PATH)[1].range == "bytes=1024-"  # kept the 1 KiB that did arrive
    assert_clean(folder, published=None)


def test_wrong_bytes_once_are_fetched_again(server, body, folder):
    fetch(make_spec(server.add(PATH, body, faults=["wrong"]), body), cache_dir=folder, quiet=True)
    assert len(server.gets(PATH)) == 2
    assert_clean(folder, published=body)


def test_wrong_bytes_twice_raise_integrity_error(server, body, folder):
    url = server.add(PATH, body, always="wrong")
    spec = make_spec(url, body)
    with pytest.raises(IntegrityError) as info:
        fetch(spec, cache_dir=folder, quiet=True)
    text = str(info.value)
    bad_md5 = hashlib.md5(bytes(b ^ 0xFF for b in body)).hexdigest()
    assert url in text and str(folder / NAME) in text
    assert f"md5: expected {spec.md5}, got {bad_md5}" in text
    assert isinstance(info.value, ValueError)
    assert len(server.gets(PATH)) == 2
    assert_clean(folder, published=None)


def test_wrong_size_is_reported_before_hashing(server, body, folder):
    spec = FileSpec(NAME, server.add(PATH, body), size=len(body) + 1,
                    md5=hashlib.md5(body).hexdigest())
    with pytest.raises(IntegrityError, match=f"size: expected {len(body) + 1} bytes, got "
                                             f"{len(body)} bytes"):
        fetch(spec, cache_dir=folder, quiet=True)
    assert_clean(folder, published=None)


@pytest.mark.parametrize("kind", ["md5", "sha256", "sha256_prefix"])
def test_each_hash_kind_is_enforced(server, body, folder, kind):
    url = server.add(PATH, body)
    digest = hashlib.new(kind.split("_")[0], body).hexdigest()
    good = {"md5": digest} if kind == "md5" else {"sha256": digest} if kind == "sha256" \
        else {"sha256_prefix": digest[:8]}
    wrong = {key: ("0" if value[0] != "0" else "1") + value[1:] for key, value in good.items()}
    with pytest.raises(IntegrityError, match=kind.replace("_", " ") + ": expected"):
        fetch(FileSpec(NAME, url, **wrong), cache_dir=folder, quiet=True)
    assert_clean(folder, published=None)
    assert fetch(FileSpec(NAME, url, **good), cache_dir=folder, quiet=True) == folder / NAME
    assert_clean(folder, published=body)


# --- offline and mirrors --------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_offline_names_file_folder_and_url(server, body, folder, monkeypatch, value):
    monkeypatch.setenv("KERAS_VGGRES_OFFLINE", value)
    url = server.add(PATH, body)
    with pytest.raises(WeightsUnavailableError) as info:
        fetch(make_spec(url, body), cache_dir=folder, quiet=True)
    text = str(info.value)
    assert NAME in text and str(folder) in text and url in text
    assert isinstance(info.value, FileNotFoundError)
    assert server.requests == [] and not folder.exists()


def test_offline_ignores_an_http_mirror(server, mirror_server, body, folder, monkeypatch):
    mirror_server.add(PATH, body)
    monkeypatch.setenv("KERAS_VGGRES_MIRROR", mirror_server.base_url + "/models")
    monkeypatch.setenv("KERAS_VGGRES_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError):
        fetch(make_spec(server.add(PATH, body), body), cache_dir=folder, quiet=True)
    assert server.requests == [] and mirror_server.requests == []


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
@pytest.mark.parametrize("form", ["directory", "file-url"])
def test_local_mirror(server, body, folder, tmp_path, monkeypatch, form, offline):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / NAME).write_bytes(body)
    where = tmp_path / "mirror"
    monkeypatch.setenv("KERAS_VGGRES_MIRROR", where.as_uri() if form == "file-url" else str(where))
    if offline:
        monkeypatch.setenv("KERAS_VGGRES_OFFLINE", "1")
    fetch(make_spec(server.add(PATH, body), body), cache_dir=folder, quiet=True)
    assert server.requests == []
    assert_clean(folder, published=body)


def test_http_mirror_is_used_instead_of_origin(server, mirror_server, body, folder, monkeypatch):
    mirror_server.add(PATH, body)
    monkeypatch.setenv("KERAS_VGGRES_MIRROR", mirror_server.base_url + "/models/")
    fetch(make_spec(server.add(PATH, body), body), cache_dir=folder, quiet=True)
    assert server.requests == [] and len(mirror_server.gets(PATH)) == 1
    assert_clean(folder, published=body)


def test_mirror_miss_falls_through_to_origin(server, mirror_server, body, folder, monkeypatch):
    monkeypatch.setenv("KERAS_VGGRES_MIRROR", mirror_server.base_url + "/models")
    fetch(make_spec(server.add(PATH, body), body), cache_dir=folder, quiet=True)
    assert len(mirror_server.gets(PATH)) == 1 and len(server.gets(PATH)) == 1
    assert_clean(folder, published=body)


def test_offline_directory_mirror_miss_names_the_mirror(server, body, folder, tmp_path,
                                                        monkeypatch):
    monkeypatch.setenv("KERAS_VGGRES_MIRROR", str(tmp_path / "empty"))
    monkeypatch.setenv("KERAS_VGGRES_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="mirror") as info:
        fetch(make_spec(server.add(PATH, body), body), cache_dir=folder, quiet=True)
    assert str(tmp_path / "empty" / NAME) in str(info.value)
    assert server.requests == []
    assert_clean(folder, published=None)


def test_corrupt_mirror_copy_falls_back_to_origin(server, body, folder, tmp_path, monkeypatch,
                                                  caplog):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / NAME).write_bytes(bytes(len(body)))
    monkeypatch.setenv("KERAS_VGGRES_MIRROR", str(tmp_path / "mirror"))
    with caplog.at_level(logging.WARNING, logger="keras_vggres"):
        fetch(make_spec(server.add(PATH, body), body), cache_dir=folder, quiet=True)
    assert "fails verification" in caplog.text
    assert len(server.gets(PATH)) == 1
    assert_clean(folder, published=body)


def test_unsupported_mirror_scheme_is_rejected(server, body, folder, monkeypatch):
    monkeypatch.setenv("KERAS_VGGRES_MIRROR", "ftp://example.invalid/models")
    with pytest.raises(ValueError, match="KERAS_VGGRES_MIRROR"):
        fetch(make_spec(server.add(PATH, body), body), cache_dir=folder, quiet=True)


# --- concurrency ----------------------------------------------------------------------------------

CHILD = r"""
import json, os, sys, time, types
root, folder, url, size, md5, ready, go = sys.argv[1:]
for pkg in ("keras_vggres", "keras_vggres.weights"):  # skip package __init__s: import only ours
    module = types.ModuleType(pkg)
    module.__path__ = [os.path.join(root, *pkg.split("."))]
    sys.modules[pkg] = module
from keras_vggres.weights.download import fetch
from keras_vggres.weights.spec import FileSpec
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("keras", "tensorflow"))
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
t0 = time.time()
path = fetch(FileSpec("%s", url, size=int(size), md5=md5), cache_dir=folder, quiet=True)
print(json.dumps({"path": str(path), "t0": t0, "t1": time.time(), "heavy": heavy}))
""" % NAME


def test_four_processes_download_once(server, body, folder, tmp_path):
    url = server.add(PATH, body, chunk_delay=0.05)  # ~1 s per download, so the four overlap
    root = Path(download.__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_VGGRES_")}
    go = tmp_path / "go"
    children, readies = [], []
    for i in range(4):
        readies.append(tmp_path / f"ready{i}")
        args = [root, folder, url, len(body), hashlib.md5(body).hexdigest(), readies[-1], go]
        children.append(subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         env=env, text=True))
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in readies) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    results = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        results.append(json.loads(out))
    assert {r["path"] for r in results} == {str(folder / NAME)}
    assert all(r["heavy"] == [] for r in results), "download.py must not import keras/tensorflow"
    assert max(r["t0"] for r in results) < min(r["t1"] for r in results)  # they really overlapped
    assert len(server.gets(PATH)) == 1
    assert_clean(folder, published=body)


def test_threads_stay_correct_without_the_lock(server, body, folder, monkeypatch):
    @contextlib.contextmanager
    def no_lock(final):
        yield False

    monkeypatch.setattr(download, "_lock", no_lock)
    spec = make_spec(server.add(PATH, body, chunk_delay=0.01), body)
    results, errors = [], []

    def worker():
        try:
            results.append(fetch(spec, cache_dir=folder, quiet=True))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and set(results) == {folder / NAME}
    assert 1 <= len(server.gets(PATH)) <= 4
    assert_clean(folder, published=body)


# --- small contracts ------------------------------------------------------------------------------

def test_progress_bar_only_when_asked_or_on_a_tty(server, body, folder, capsys, monkeypatch):
    url = server.add(PATH, body)
    fetch(make_spec(url, body), cache_dir=folder / "a", quiet=False)
    assert "0.3/0.3 MiB 100%" in capsys.readouterr().err
    fetch(make_spec(url, body), cache_dir=folder / "b")  # captured stderr is not a TTY
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(download.sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setenv("KERAS_VGGRES_QUIET", "1")
    fetch(make_spec(url, body), cache_dir=folder / "c")
    assert capsys.readouterr().err == ""


def test_verify_file_describes_mismatches(body, tmp_path):
    spec = make_spec("http://127.0.0.1/x", body, sha256=True)
    path = tmp_path / NAME
    assert "does not exist" in verify_file(path, spec)
    path.write_bytes(body[:10])
    assert verify_file(path, spec) == f"size: expected {len(body)} bytes, got 10 bytes"
    path.write_bytes(bytes(len(body)))
    problem = verify_file(path, spec)
    assert "md5: expected" in problem and "sha256: expected" in problem
    assert cached_path(spec, tmp_path) is None


@pytest.mark.parametrize("bad, match", [
    (dict(name="../evil.h5"), "spec.name"),
    (dict(name=""), "spec.name"),
    (dict(md5=None), "cannot be verified"),
    (dict(url="ftp://127.0.0.1/x.h5"), "spec.url"),
])
def test_bad_specs_are_rejected(body, folder, bad, match):
    fields = dict(name=NAME, url="http://127.0.0.1:9/x.h5", md5=hashlib.md5(body).hexdigest())
    with pytest.raises(ValueError, match=match):
        fetch(FileSpec(**{**fields, **bad}), cache_dir=folder, quiet=True)


def test_bad_timeout_setting_is_named(server, body, folder, monkeypatch):
    monkeypatch.setenv("KERAS_VGGRES_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="KERAS_VGGRES_TIMEOUT='soon'"):
        fetch(make_spec(server.add(PATH, body), body), cache_dir=folder, quiet=True)
    assert_clean(folder, published=None)
