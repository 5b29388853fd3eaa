"""Hostile cache states: verify --delete racing a download, odd entries, planted links, converted
files that were tampered with, a missing cache folder.

Servers are 127.0.0.1 only (tests/support/http_server.py); every file is generated here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keras_vggres import _atomic, cli
from keras_vggres.weights import _fs, cache, converted as conv, download
from keras_vggres.weights.download import UnsafeCacheEntryError, fetch
from keras_vggres.weights.spec import FileSpec

NAME = "race_weights.h5"
ROOT = Path(download.__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("online_downloads")


@pytest.fixture
def body():
    return os.urandom(300 * 1024)


def spec_of(name, body, url="http://127.0.0.1:9/x"):
    return FileSpec(name, url, size=len(body), md5=hashlib.md5(body).hexdigest())


# --- verify --delete racing a download (real processes) ----------------------------------------

CHILD = r"""
import json, os, sys, time, types
root, role, folder, name, url, size, md5, go, done, delay = sys.argv[1:]
for pkg in ("keras_vggres", "keras_vggres.weights"):  # skip package __init__s: import only ours
    module = types.ModuleType(pkg)
    module.__path__ = [os.path.join(root, *pkg.split("."))]
    sys.modules[pkg] = module
from keras_vggres.weights import cache, download
from keras_vggres.weights.spec import FileSpec
spec = FileSpec(name, url, size=int(size), md5=md5)
while not os.path.exists(go):
    time.sleep(0.005)
if role == "fetch":
    print(json.dumps(str(download.fetch(spec, cache_dir=folder, quiet=True))))
    open(done, "w").close()
    sys.exit(0)
check = download.check_open_file
def slow_check(f, spec):  # widen the window between finding a bad file and deleting it
    problem = check(f, spec)
    if problem:
        time.sleep(float(delay))
    return problem
download.check_open_file = slow_check
seen = []
while True:
    finished = os.path.exists(done)
    seen += [[r.status, r.deleted, r.note] for r in
             cache.verify_cache(folder, delete=True, specs=[spec])]
    if finished:
        break
print(json.dumps(seen))
"""


@pytest.mark.parametrize("delay", [0.4, 0.8, 1.5])
def test_verify_delete_racing_a_download_never_deletes_the_good_file(server, body, tmp_path,
                                                                     delay):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / NAME).write_bytes(bytes(len(body)))  # corrupt: right size, wrong bytes
    url = server.add("/" + NAME, body, chunk_delay=0.05)  # about 1 s: verify runs meanwhile
    go, done = tmp_path / "go", tmp_path / "done"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_VGGRES_")}
    args = [folder, NAME, url, len(body), hashlib.md5(body).hexdigest(), go, done, delay]
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), role, *map(str, args)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                 text=True) for role in ("fetch", "verify")]
    time.sleep(0.3)  # both import and wait for `go`
    go.touch()
    (fetched, fetch_err), (verified, verify_err) = (c.communicate(timeout=60) for c in children)
    assert [c.returncode for c in children] == [0, 0], fetch_err + verify_err
    assert json.loads(fetched) == str(folder / NAME)
    assert (folder / NAME).read_bytes() == body, "a good, freshly published file was deleted"
    seen = json.loads(verified)
    assert seen[-1][:2] == ["ok", False]
    assert ["ok", False, "replaced by a good copy while checking"] in seen  # the race happened
    assert len(server.gets("/" + NAME)) == 1


# --- entries that are not regular files ----------------------------------------------------------

def test_verify_reports_every_entry_and_goes_on(tmp_path, monkeypatch):
    good, bad = b"good bytes", b"other bytes"
    names = ["a_good.h5", "b_dir.h5", "c_emptydir.h5", "d_fifo.h5", "e_dangling.h5", "f_bad.h5",
             "g_unreadable.h5"]
    specs = [spec_of(n, good) for n in names]
    (tmp_path / names[0]).write_bytes(good)
    (tmp_path / names[1]).mkdir()
    (tmp_path / names[1] / "keep.txt").write_text("user data")
    (tmp_path / names[2]).mkdir()
    os.mkfifo(tmp_path / names[3])
    (tmp_path / names[4]).symlink_to(tmp_path / "nowhere")
    (tmp_path / names[5]).write_bytes(bad)
    (tmp_path / names[6]).write_bytes(good)
    opener = _fs.open_regular

    def unreadable(path):
        if Path(path).name == names[6]:
            raise PermissionError(13, "Permission denied", str(path))
        return opener(path)

    monkeypatch.setattr(_fs, "open_regular", unreadable)
    results = cache.verify_cache(tmp_path, specs=specs)
    assert [(r.path.name, r.status) for r in results] == list(zip(names, [
        "ok", "NOT REGULAR", "NOT REGULAR", "NOT REGULAR", "NOT REGULAR", "BAD", "UNREADABLE"]))
    details = [r.detail for r in results]
    assert "a directory" in details[1] and "a FIFO" in details[3]
    assert "symbolic link" in details[4] and "does not exist" in details[4]
    assert f"expected {len(good)} bytes, got {len(bad)} bytes" in details[5]
    assert "Permission denied" in details[6]

    monkeypatch.setattr(_fs, "open_regular", opener)
    results = cache.verify_cache(tmp_path, specs=specs, delete=True)
    assert [r.deleted for r in results] == [False, False, True, True, True, True, False]
    assert "not deleted" in results[1].note
    assert sorted(os.listdir(tmp_path)) == sorted(
        [names[0], names[1], names[6]] + [n + ".lock" for n in names[1:6]])
    assert (tmp_path / names[1] / "keep.txt").read_text() == "user data"


def test_cli_verify_goes_past_a_directory_entry(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_VGGRES_HOME", str(tmp_path))
    (tmp_path / "resnet18-f37072fd.pth").mkdir()  # real manifest names
    (tmp_path / "resnet34-b627a593.pth").write_bytes(b"not the weights")
    assert cli.main(["verify"]) == 1
    out = capsys.readouterr().out
    assert f"NOT REGULAR {tmp_path / 'resnet18-f37072fd.pth'}: not a regular file" in out
    assert f"BAD         {tmp_path / 'resnet34-b627a593.pth'}: sha256 prefix" in out
    assert "2 file(s) checked" in out and "2 bad" in out
    assert cli.main(["verify", "--delete"]) == 0  # the empty directory is removed too
    assert not os.path.lexists(tmp_path / "resnet18-f37072fd.pth")


def test_verify_on_a_missing_folder_says_so_and_fails(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "no-such-cache"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cache.verify_cache(missing)
    monkeypatch.setenv("KERAS_VGGRES_HOME", str(missing))
    assert cli.main(["verify"]) != 0
    err = capsys.readouterr().err
    assert f"The cache folder {missing} does not exist" in err and "nothing to verify" in err
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        cache.verify_cache(tmp_path / "file")


def test_fetch_into_a_directory_entry_is_a_clear_error(server, body, tmp_path):
    (tmp_path / NAME).mkdir()
    with pytest.raises(UnsafeCacheEntryError, match="is a directory where the weight file"):
        fetch(spec_of(NAME, body, server.add("/" + NAME, body)), cache_dir=tmp_path, quiet=True)
    assert server.requests == []


# --- planted symbolic links ----------------------------------------------------------------------

@pytest.mark.parametrize("target_exists", [False, True], ids=["dangling", "existing"])
def test_planted_lock_link_is_refused_and_nothing_is_created_outside(server, body, tmp_path,
                                                                     target_exists):
    folder, outside = tmp_path / "cache", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    target = outside / "planted.lock"
    if target_exists:
        target.write_bytes(b"theirs")
    (folder / (NAME + ".lock")).symlink_to(target)
    url = server.add("/" + NAME, body)
    with pytest.raises(UnsafeCacheEntryError, match="symbolic link") as info:
        fetch(spec_of(NAME, body, url), cache_dir=folder, quiet=True)
    assert str(folder / (NAME + ".lock")) in str(info.value) and "Remove" in str(info.value)
    assert server.requests == []
    (folder / NAME).write_bytes(b"corrupt")
    [result] = cache.verify_cache(folder, specs=[spec_of(NAME, body)], delete=True)
    assert result.status == "BAD" and not result.deleted and "symbolic link" in result.note
    assert os.listdir(outside) == (["planted.lock"] if target_exists else [])
    if target_exists:
        assert target.read_bytes() == b"theirs"


def test_planted_temp_links_are_swept_never_followed(server, body, tmp_path):
    folder, outside = tmp_path / "cache", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (outside / "keep").write_bytes(b"theirs")
    (folder / f"{NAME}.deadbeef.tmp").symlink_to(outside / "a")
    (folder / f"{NAME}.cafebabe.incomplete").symlink_to(outside / "b")
    (folder / f"{NAME}.0badf00d.tmp").symlink_to(outside / "keep")
    fetch(spec_of(NAME, body, server.add("/" + NAME, body)), cache_dir=folder, quiet=True)
    assert sorted(os.listdir(folder)) == [NAME, NAME + ".lock"]
    assert os.listdir(outside) == ["keep"] and (outside / "keep").read_bytes() == b"theirs"


@pytest.mark.parametrize("source", ["origin", "mirror"])
@pytest.mark.parametrize("target_exists", [False, True], ids=["dangling", "existing"])
def test_link_squatting_on_the_temp_name_is_replaced_not_followed(server, body, tmp_path,
                                                                  monkeypatch, source,
                                                                  target_exists):
    folder, outside = tmp_path / "cache", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    target = outside / "victim"
    if target_exists:
        target.write_bytes(b"theirs: " + body[:1000])  # a resumable-looking prefix
    squat = folder / "squatted-temp"
    squat.symlink_to(target)
    monkeypatch.setattr(_atomic, "temp_sibling", lambda path, suffix="": str(squat))
    if source == "mirror":
        (tmp_path / "mirror").mkdir()
        (tmp_path / "mirror" / NAME).write_bytes(body)
        monkeypatch.setenv("KERAS_VGGRES_MIRROR", str(tmp_path / "mirror"))
    fetch(spec_of(NAME, body, server.add("/" + NAME, body)), cache_dir=folder, quiet=True)
    assert (folder / NAME).read_bytes() == body
    assert all(seen.range is None for seen in server.requests)
    assert os.listdir(outside) == (["victim"] if target_exists else [])
    if target_exists:
        assert target.read_bytes() == b"theirs: " + body[:1000]


# --- converted .pth caches -----------------------------------------------------------------------

def _tv_file(folder, seed=0):
    """A generated torchvision resnet18 state dict under its hash-prefixed name, and its spec."""
    from tests.support.synthetic_checkpoints import write_checkpoint

    tmp = folder / "tmp.pth"
    write_checkpoint("resnet18", tmp, seed=seed)
    data = tmp.read_bytes()
    name = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    tmp.rename(folder / name)
    return folder / name, FileSpec(name, "http://127.0.0.1:9/" + name, size=len(data),
                                   sha256_prefix=hashlib.sha256(data).hexdigest()[:8])


def _datasets(path):
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda key, item: out.__setitem__(key, item[()])
                     if isinstance(item, h5py.Dataset) else None)
    return out


def test_tampered_converted_file_is_detected_reported_and_rebuilt(tmp_path, caplog):
    import numpy as np

    from keras_vggres.weights.convert import convert_pth_file
    from keras_vggres.weights.pretrained import converted_path

    pth, spec = _tv_file(tmp_path)
    target = converted_path(pth, "resnet18", include_top=False)
    convert_pth_file(pth, "resnet18", tmp_path / "reference.h5", include_top=False)
    reference = _datasets(tmp_path / "reference.h5")
    (tmp_path / "reference.h5").unlink()

    def build(out):
        convert_pth_file(pth, "resnet18", out, include_top=False)

    def ensure():
        return conv.ensure_converted(pth, spec, target, build)

    assert ensure() == target
    sidecar = json.loads(conv.sidecar_path(target).read_text())
    assert sidecar["source"]["name"] == spec.name
    assert sidecar["source"]["sha256"].startswith(spec.sha256_prefix)
    assert sidecar["file"]["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    assert [r.status for r in cache.verify_cache(tmp_path, specs=[spec])] == ["ok", "ok"]

    target.write_bytes(bytes(target.stat().st_size))  # zeroed: same size, no weights
    results = cache.verify_cache(tmp_path, specs=[spec])
    assert [r.status for r in results] == ["ok", "BAD"]
    assert results[1].path == target and "sha256: expected" in results[1].detail
    with caplog.at_level(logging.WARNING, logger="keras_vggres"):
        ensure()
    assert "fail verification" in caplog.text and str(pth) in caplog.text
    assert conv.check_converted(target, {spec.name: spec}) is None
    rebuilt = _datasets(target)
    assert rebuilt.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_array_equal(rebuilt[key], value)

    for tamper in ("drop sidecar", "other source", "garbage sidecar"):
        side = conv.sidecar_path(target)
        if tamper == "drop sidecar":
            side.unlink()
        elif tamper == "other source":
            record = json.loads(side.read_text())
            record["source"]["sha256"] = "0" * 64
            side.write_text(json.dumps(record))
        else:
            side.write_bytes(b"\0" * 100)
        assert conv.check_converted(target, {spec.name: spec}) is not None, tamper
        ensure()
        assert conv.check_converted(target, {spec.name: spec}) is None, tamper

    target.write_bytes(b"zeroed")
    results = cache.verify_cache(tmp_path, specs=[spec], delete=True)
    assert [(r.status, r.deleted) for r in results] == [("ok", False), ("BAD", True)]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == \
        [pth.name]


def test_orphan_sidecar_is_reported_and_deleted(tmp_path):
    orphan = tmp_path / ("x.resnet18" + conv.CONVERTED_SUFFIX + conv.SIDECAR_SUFFIX)
    orphan.write_text("{}")
    [result] = cache.verify_cache(tmp_path, specs=[])
    assert result.status == "BAD" and "does not exist" in result.detail
    [result] = cache.verify_cache(tmp_path, specs=[], delete=True)
    assert result.deleted and not orphan.exists()


def test_zeroed_converted_cache_never_loads_as_a_zero_model(tmp_path, monkeypatch, caplog):
    import numpy as np

    import keras_vggres
    from keras_vggres.weights import manifest

    mirror, home = tmp_path / "mirror", tmp_path / "home"
    mirror.mkdir()
    pth, spec = _tv_file(mirror)
    record = {"name": spec.name, "url": spec.url, "size": spec.size,
              "sha256_prefix": spec.sha256_prefix}
    doc = {"schema": 1, "models": {"resnet18": {"default": "tv1", "tags": {"tv1": {
        "source": "torchvision", "format": "torch-pth", "variant": None,
        "files": {"top": record}, "preprocess": "torch",
        "transform": {"resize": 256, "crop": 224, "interpolation": "bilinear"},
        "metrics": {"top1": None, "top5": None}, "params": None, "gflops": None,
        "license": "test"}}}}}
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    monkeypatch.setenv("KERAS_VGGRES_MANIFEST", str(tmp_path / "manifest.json"))
    monkeypatch.setenv("KERAS_VGGRES_MIRROR", str(mirror))
    monkeypatch.setenv("KERAS_VGGRES_OFFLINE", "1")
    monkeypatch.setenv("KERAS_VGGRES_HOME", str(home))
    manifest.reload_manifest()
    try:
        shape = (32, 32, 3)
        direct = keras_vggres.ResNet18(weights=str(pth), include_top=False, input_shape=shape)
        keras_vggres.ResNet18(weights="tv1", include_top=False, input_shape=shape)
        target = home / f"{pth.stem}.resnet18_notop{conv.CONVERTED_SUFFIX}"
        target.write_bytes(bytes(target.stat().st_size))
        with caplog.at_level(logging.WARNING, logger="keras_vggres"):
            model = keras_vggres.ResNet18(weights="tv1", include_top=False, input_shape=shape)
        assert "fail verification" in caplog.text
        for ours, theirs in zip(model.weights, direct.weights):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    finally:
        monkeypatch.undo()
        manifest.reload_manifest()
