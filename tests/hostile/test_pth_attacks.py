"""Hostile `.pth` files: each attack ends in one clear ValueError naming the file, in bounded RAM.

Every file is generated here, by hand (`pth_crafting`: pickle opcodes, zip headers, deflate
streams). Attacks on memory or on the process itself run in a child (`isolated`): its return
code shows a crash, its stderr must be one line, and its peak RSS must stay under 1 GiB where,
unguarded, the same file costs more (sizes are chosen so). Cheap attacks run in-process.
torch is used only to write genuine checkpoints that must keep loading.
"""

import io
import pickle
import pickletools
import random
import re
import struct
import zipfile

import numpy as np
import pytest

from keras_vggres.weights import _pth_limits as limits
from keras_vggres.weights.torch_pth import UnsafeCheckpointError, load_pth
from tests.hostile.isolated import PEAK_RSS_LIMIT_BYTES, python, run_isolated
from tests.hostile.pth_crafting import (
    MiB, checkpoint_zip, deflated, flat_tensor, legacy_file, p_global, p_int, p_stack_global,
    p_str, p_tensor, p_tuple, state_pickle, stored, write_zip, zero_bomb,
)

_LOAD = """
import sys
from keras_vggres.weights.torch_pth import load_pth
try:
    arrays = load_pth(sys.argv[1])
except ValueError as exc:
    sys.exit(f"{type(exc).__name__}: {exc}")
print(f"loaded {len(arrays)} tensors")
"""
_CHILD_ADDRESS_SPACE = 6 << 30  # a regression fails with MemoryError, not by taking the machine


def _one_tensor(numel=4):
    return state_pickle({"w": flat_tensor("0", numel)}), {"0": bytes(4 * numel)}


def _load_in_child(path):
    return run_isolated(python("-c", _LOAD, path), path.parent,
                        address_space_bytes=_CHILD_ADDRESS_SPACE)


def _assert_one_clear_error(outcome, path, pattern, *, returncode=1, prefix=""):
    assert outcome.returncode == returncode, outcome  # negative: the child crashed
    lines = outcome.stderr_lines
    errors = [line for line in lines if "Error" in line or "error:" in line]
    assert len(errors) == 1 and errors[0] == lines[-1], lines
    assert "Traceback" not in outcome.stderr
    assert lines[-1].startswith(prefix) and str(path) in lines[-1], lines[-1]
    assert re.search(pattern, lines[-1]), lines[-1]
    assert outcome.peak_rss_bytes < PEAK_RSS_LIMIT_BYTES, outcome.peak_rss_bytes


def _refused(path, pattern, error=ValueError):
    with pytest.raises(error) as info:
        load_pth(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    assert re.search(pattern, message), message
    return message


# ------------------------------------------------------------------ memory and crash attacks


def _data_pkl_bomb(tmp_path):  # 2 GiB of zeros in 2 MB: the reported 2.0 GB RSS
    return write_zip(tmp_path / "pkl_bomb.pth", [zero_bomb("archive/data.pkl", 2048)]), \
        r"UnsafeCheckpointError: .*record 'archive/data.pkl' is 2147483648 bytes; at most"


def _byteorder_bomb(tmp_path):
    pkl, storages = _one_tensor()
    records = [stored("archive/data.pkl", pkl), zero_bomb("archive/byteorder", 2048),
               stored("archive/data/0", storages["0"])]
    return write_zip(tmp_path / "order_bomb.pth", records), \
        r"record 'archive/byteorder' is 2147483648 bytes; at most 16"


def _storage_bomb(tmp_path):  # an honest header: 1.5 GiB of float32 zeros, deflated
    numel = 1536 * MiB // 4
    return write_zip(tmp_path / "storage_bomb.pth", [
        stored("archive/data.pkl", state_pickle({"w": flat_tensor("0", numel)})),
        zero_bomb("archive/data/0", 1536)]), \
        r"record 'archive/data/0' is compressed \d+x .* expands at most 64x"


def _many_small_bombs(tmp_path):  # 1024 records of 1 MiB each: every one under the floor
    n, numel = 1024, MiB // 4
    pkl = state_pickle({f"w{i}": flat_tensor(str(i), numel) for i in range(n)})
    records = [stored("archive/data.pkl", pkl)]
    records += [zero_bomb(f"archive/data/{i}", 1) for i in range(n)]
    return write_zip(tmp_path / "many_bombs.pth", records), \
        r"would bring the bytes inflated from this \d+-byte file past 64x its size"


def _views_of_one_storage(tmp_path):  # the reported 1.06 GB from a 786 KB file
    numel = 512 * 1024 // 4
    pkl = state_pickle({f"v{i}": flat_tensor("0", numel) for i in range(2048)})
    return checkpoint_zip(tmp_path / "views.pth", pkl, {"0": bytes(4 * numel)}), \
        r"tensors would take 1073741824 bytes from 524288 bytes of storage; at most 4x"


def _views_and_a_phantom_storage(tmp_path):
    """The views' storage comes first; a second storage declares 4 TiB to inflate the view
    budget, but its record holds 4 bytes: refused before any view is copied."""
    numel = 512 * 1024 // 4
    entries = {f"v{i}": flat_tensor("0", numel) for i in range(2048)}
    entries["phantom"] = flat_tensor("1", 1 << 40)
    return checkpoint_zip(tmp_path / "phantom.pth", state_pickle(entries),
                          {"0": bytes(4 * numel), "1": bytes(4)}), \
        r"storage '1' is truncated: it holds 4 bytes but 1099511627776 float32 elements need"


def _views_and_a_phantom_storage_legacy(tmp_path):
    numel = 512 * 1024 // 4
    entries = {f"v{i}": p_tensor("0", numel, 0, (numel,), (1,), legacy=True) for i in range(2048)}
    entries["phantom"] = p_tensor("1", 1 << 40, 0, (1,), (1,), legacy=True)
    return legacy_file(tmp_path / "phantom_legacy.pth", state_pickle(entries), ["0", "1"],
                       [(numel, bytes(4 * numel)), (1 << 40, bytes(4))]), \
        r"truncated legacy checkpoint: its storages need 4398047035408 bytes, the file has 5243"


def _opcode_flood(tmp_path):  # 20M empty lists: ~1.2 GB if unpickled
    pkl = b"\x80\x02(" + b"]" * 20_000_000 + b"l."
    return checkpoint_zip(tmp_path / "flood.pth", pkl), r"more than 1000000 opcodes"


def _memo_index(tmp_path):  # LONG_BINPUT 2^32-1: the unpickler would size its memo to 64 GB
    return checkpoint_zip(tmp_path / "memo.pth", b"\x80\x02]r\xff\xff\xff\xff."), \
        r"memo index 4294967295 at byte 3 exceeds 1000000"


def _giant_frame(tmp_path):
    pkl = b"\x80\x04\x95" + struct.pack("<Q", 1 << 62) + b"N."
    return checkpoint_zip(tmp_path / "frame.pth", pkl), r"a frame at byte 2 claims 461168601842"


def _giant_binunicode_legacy(tmp_path):  # read from a file, the length was allocated first
    path = tmp_path / "bu8.pth"
    path.write_bytes(b"\x80\x04\x8d" + struct.pack("<Q", 1 << 40) + bytes(64))
    return path, r"legacy header is truncated or corrupt: an opcode at byte 11 needs 1099511627776"


def _deep_tuple_key(tmp_path):  # hashing a 10^6-deep tuple as a dict key: segfault (rc 139)
    pkl = b"\x80\x02}" + b")" + b"\x85" * 10**6 + b"K\x01s."
    return checkpoint_zip(tmp_path / "deep_key.pth", pkl), r"nest more than 100 deep at byte 104"


def _deep_lists(tmp_path):  # MARK/LIST pairs: as deep as the opcode limit allows
    pkl = b"\x80\x02" + b"(" * 400_000 + b"l" * 400_000 + b"."
    return checkpoint_zip(tmp_path / "deep_lists.pth", pkl), r"nest more than 100 deep"


def _deep_tuple_legacy(tmp_path):
    path = tmp_path / "deep_legacy.pth"
    path.write_bytes(b"\x80\x02}" + b")" + b"\x85" * 10**6 + b"K\x01s.")
    return path, r"legacy header: containers nest more than 100 deep"


def _deep_via_memo(tmp_path):
    """Each new list is appended to the previous one fetched back from the memo: the depth
    grows where a walk of the stack alone would not see it."""
    body = b"".join(b"]r" + struct.pack("<I", i) + b"j" + struct.pack("<I", i - 1)
                    + b"j" + struct.pack("<I", i) + b"a0" for i in range(1, 10**5))
    pkl = b"\x80\x02]r\x00\x00\x00\x00" + body + b"."
    return checkpoint_zip(tmp_path / "deep_memo.pth", pkl), \
        r"APPEND at byte \d+ modifies an object that is not a container the pickle holds"


MEMORY_ATTACKS = [_data_pkl_bomb, _byteorder_bomb, _storage_bomb, _many_small_bombs,
                  _views_of_one_storage, _views_and_a_phantom_storage,
                  _views_and_a_phantom_storage_legacy, _opcode_flood, _memo_index, _giant_frame,
                  _giant_binunicode_legacy, _deep_tuple_key, _deep_lists, _deep_tuple_legacy,
                  _deep_via_memo]


@pytest.mark.parametrize("attack", MEMORY_ATTACKS, ids=lambda f: f.__name__.strip("_"))
def test_attack_ends_in_one_clear_error_in_bounded_memory(tmp_path, attack):
    path, pattern = attack(tmp_path)
    assert path.stat().st_size < 25 * MiB
    _assert_one_clear_error(_load_in_child(path), path, pattern)


@pytest.mark.parametrize("attack", [_data_pkl_bomb, _deep_tuple_key],
                         ids=["data_pkl_bomb", "deep_tuple_key"])
def test_cli_convert_reports_one_line(tmp_path, attack):
    path, pattern = attack(tmp_path)
    outcome = run_isolated(python("-m", "keras_vggres.cli", "convert", path, "--model",
                                  "resnet18", "--out", tmp_path / "x.h5"), tmp_path)
    _assert_one_clear_error(outcome, path, pattern.removeprefix("UnsafeCheckpointError: "),
                            returncode=2, prefix="keras-vggres convert: error: ")
    assert not (tmp_path / "x.h5").exists()


# ------------------------------------------------------------------------ resource limits


def test_data_pkl_bomb_under_the_size_cap_is_refused_by_its_ratio(tmp_path):
    path = write_zip(tmp_path / "b.pth", [zero_bomb("archive/data.pkl", 48)])
    _refused(path, r"record 'archive/data.pkl' is compressed \d+x", UnsafeCheckpointError)


def test_pickle_over_the_size_cap_is_refused_unread(tmp_path, monkeypatch):
    pkl = b"\x80\x02" + p_str("x" * 4096) + b"0" + state_pickle({"w": flat_tensor("0", 1)})[2:]
    zipped = checkpoint_zip(tmp_path / "z.pth", pkl, {"0": bytes(4)})
    legacy = legacy_file(tmp_path / "l.pth", pkl, ["0"], [(1, bytes(4))])
    assert load_pth(zipped) and load_pth(legacy)
    monkeypatch.setattr(limits, "MAX_PICKLE_BYTES", 4000)
    _refused(zipped, r"record 'archive/data.pkl' is \d+ bytes; at most 4000", UnsafeCheckpointError)
    _refused(legacy, r": pickle: an opcode at byte \d+ needs 4096 bytes; \d+ are left within the "
                     "size limit", UnsafeCheckpointError)


def test_opcode_and_depth_limits_apply_to_every_legacy_pickle(tmp_path, monkeypatch):
    path = legacy_file(tmp_path / "l.pth", _legacy_state(), ["0"], [(2, bytes(8))])
    assert list(load_pth(path)) == ["w"]
    monkeypatch.setattr(limits, "MAX_PICKLE_DEPTH", 3)  # the header pickles nest 2 deep
    _refused(path, r": pickle: containers nest more than 3 deep", UnsafeCheckpointError)
    monkeypatch.setattr(limits, "MAX_PICKLE_OPCODES", 4)  # the magic number takes 3
    _refused(path, r": legacy header: it has more than 4 opcodes", UnsafeCheckpointError)


def test_huge_ints_are_refused_before_they_are_used(tmp_path):
    pkl = state_pickle({"w": flat_tensor("0", 1), "seed": b"\x8b" + struct.pack("<i", 4096)
                        + b"\x01" * 4096})
    _refused(checkpoint_zip(tmp_path / "i.pth", pkl, {"0": bytes(4)}),
             r"an int at byte \d+ has 32761 bits, more than 256", UnsafeCheckpointError)


def test_storage_records_are_read_in_chunks_into_one_buffer(tmp_path, monkeypatch):
    values = np.arange(3 * MiB // 4, dtype="<f4")
    path = checkpoint_zip(tmp_path / "c.pth", state_pickle({"w": flat_tensor("0", values.size)}),
                          {"0": deflated("archive/data/0", values.tobytes())})
    reads = []
    original = zipfile.ZipExtFile.readinto
    monkeypatch.setattr(zipfile.ZipExtFile, "readinto",
                        lambda self, b: reads.append(len(b)) or original(self, b))
    np.testing.assert_array_equal(load_pth(path)["w"], values)
    assert max(reads) <= limits.READ_CHUNK_BYTES and len(reads) >= 3


# ---------------------------------------------------------------------- numbers that lie


@pytest.mark.parametrize("numel, offset, shape, stride, pattern", [
    (1 << 62, 0, (4,), (1,), r"storage '0' is truncated: it holds 16 bytes"),
    (1 << 64, 0, (4,), (1,), r"malformed storage size"),
    (-4, 0, (4,), (1,), r"malformed storage size"),
    (4, 1 << 62, (2,), (1,), r"reaches element 4611686018427387905 of storage '0'"),
    (4, 1 << 64, (2,), (1,), r"storage offset must be a non-negative int64"),
    (4, 0, (2, 2), (1 << 62, 1), r"reaches element 4611686018427387905"),
    (4, 0, (2,), (-1,), r"stride must be a tuple of at most 32 non-negative int64"),
    (4, 0, (1 << 64,), (1,), r"size must be a tuple of at most 32 non-negative int64"),
    (4, 0, (1,) * 33, (1,) * 33, r"at most 32"),
    (4, 0, (0, 1 << 62, 1 << 62), (1, 1, 1), r"empty tensor 'w' .* too large for NumPy"),
    (4, 0, (1 << 31, 1 << 31), (0, 0), r"has 4611686018427387904 elements .* expanded view"),
])
def test_declared_sizes_offsets_and_strides_that_lie(tmp_path, numel, offset, shape, stride,
                                                      pattern):
    pkl = state_pickle({"w": p_tensor("0", numel, offset, shape, stride)})
    _refused(checkpoint_zip(tmp_path / "n.pth", pkl, {"0": bytes(16)}), pattern)


def test_huge_stride_of_a_size_one_dimension_is_harmless(tmp_path):
    """torch allows any stride where the size is 1; it was an OverflowError in as_strided."""
    pkl = state_pickle({"w": p_tensor("0", 4, 1, (1, 3), ((1 << 63) - 1, 1))})
    path = checkpoint_zip(tmp_path / "s.pth", pkl, {"0": np.arange(4, dtype="<f4").tobytes()})
    np.testing.assert_array_equal(load_pth(path)["w"], [[1, 2, 3]])


@pytest.mark.parametrize("extra", [b"\x88", p_str("x")])  # a bool; a str
def test_non_int_sizes_are_refused(tmp_path, extra):
    tensor = (p_global("torch._utils", "_rebuild_tensor_v2")
              + p_tuple(p_tuple(p_str("storage"), p_global("torch", "FloatStorage"), p_str("0"),
                                p_str("cpu"), p_int(4)) + b"Q", p_int(0), p_tuple(extra),
                        p_tuple(p_int(1)), b"\x89", b"}") + b"R")
    _refused(checkpoint_zip(tmp_path / "t.pth", state_pickle({"w": tensor}), {"0": bytes(16)}),
             r"corrupt or not a tensor checkpoint: tensor size must be a tuple")


# ---------------------------------------------------------------------- zip structure


def test_duplicate_records_are_refused(tmp_path):
    pkl, storages = _one_tensor()
    path = checkpoint_zip(tmp_path / "d.pth", pkl, storages,
                          extra=[stored("archive/data/0", bytes(16))])
    _refused(path, r"records \['archive/data/0'\] appear twice")


def test_two_archives_are_refused(tmp_path):
    pkl, _ = _one_tensor()
    path = write_zip(tmp_path / "two.pth", [stored("a/data.pkl", pkl), stored("b/data.pkl", pkl)])
    _refused(path, r"expected one '<archive>/data.pkl' record, found \['a/data.pkl', 'b/data")


def test_missing_byteorder_means_little_endian(tmp_path):
    pkl, _ = _one_tensor(2)
    path = write_zip(tmp_path / "m.pth", [stored("archive/data.pkl", pkl),
                                         stored("archive/data/0", np.float32([1, 2]).tobytes())])
    np.testing.assert_array_equal(load_pth(path)["w"], [1, 2])


def test_overlapping_entries_are_refused(tmp_path):
    """Two directory entries naming one local record (the 'overlap' zip bomb)."""
    n, numel = 64, 1024
    pkl = state_pickle({f"w{i}": flat_tensor(str(i), numel) for i in range(n)})
    records = [stored("archive/data.pkl", pkl), stored("archive/data/0", bytes(4 * numel))]
    path = write_zip(tmp_path / "o.pth", records,
                     aliases=[(f"archive/data/{i}", 1) for i in range(1, n)])
    _refused(path, r"corrupt zip record 'archive/data/1'")


@pytest.mark.parametrize("change, pattern", [
    ({"flags": 1}, r"record 'archive/data/0' uses zip compression method 0 with flags 0x0001"),
    ({"flags": 0x40}, r"method 0 with flags 0x0040; only stored .* unencrypted"),
    ({"method": 12}, r"compression method 12 with flags 0x0000; only stored"),
    ({"method": 99}, r"compression method 99 with"),
    ({"crc": 0}, r"corrupt zip record 'archive/data/0': Bad CRC-32"),
    ({"method": 8, "data": b"\xff" * 16}, r"corrupt zip record 'archive/data/0': .*invalid"),
    ({"method": 8, "data": b""}, r"corrupt zip record 'archive/data/0'"),
])
def test_damaged_or_unsupported_records(tmp_path, change, pattern):
    pkl, _ = _one_tensor()
    record = stored("archive/data/0", np.float32([1, 2, 3, 4]).tobytes())._replace(**change)
    _refused(checkpoint_zip(tmp_path / "r.pth", pkl, {"0": record}), pattern)


@pytest.mark.parametrize("order, pattern", [
    (b"middle", r"unknown byteorder record 'middle'"),
    (b"little" * 100, r"record 'archive/byteorder' is 600 bytes; at most 16"),
])
def test_bad_byteorder(tmp_path, order, pattern):
    pkl, storages = _one_tensor()
    records = [stored("archive/data.pkl", pkl), stored("archive/byteorder", order),
               stored("archive/data/0", storages["0"])]
    _refused(write_zip(tmp_path / "o.pth", records), pattern)


def test_central_directory_with_undecodable_name(tmp_path):
    path = write_zip(tmp_path / "u.pth", [stored("archive/data.pkl", b"N.")._replace(flags=0x800)])
    path.write_bytes(path.read_bytes().replace(b"archive/data.pkl", b"archive/d\xffta.pkl"))
    _refused(path, r"truncated or corrupt zip checkpoint")


# --------------------------------------------------------------------------- legacy format


def _legacy_state(n=2):
    return state_pickle({"w": p_tensor("0", n, 0, (n,), (1,), legacy=True)})


def test_legacy_key_listed_twice(tmp_path):
    """Was a KeyError: the second copy of the key found no tensor left to fill."""
    path = legacy_file(tmp_path / "k.pth", _legacy_state(), ["0", "0"],
                       [(2, bytes(8)), (2, bytes(8))])
    _refused(path, r"storage key list names a storage twice")


def test_legacy_storage_longer_than_the_file(tmp_path):
    pkl = state_pickle({"w": p_tensor("0", 1 << 40, 0, (2,), (1,), legacy=True)})
    path = legacy_file(tmp_path / "s.pth", pkl, ["0"], [(1 << 40, bytes(8))])
    _refused(path, r"truncated legacy checkpoint: its storages need 4398046511112 bytes, the "
                   r"file has 16 left")


def test_legacy_header_pickle_naming_code(tmp_path):
    evil = b"\x80\x02cposix\nsystem\n" + p_tuple(p_str("true")) + b"R."
    path = legacy_file(tmp_path / "h.pth", _legacy_state(), ["0"], [(2, bytes(8))], header=evil)
    _refused(path, r"refusing to load `posix.system`", UnsafeCheckpointError)


def test_legacy_numel_header_disagrees(tmp_path):
    path = legacy_file(tmp_path / "n.pth", _legacy_state(), ["0"], [(-1, bytes(8))])
    _refused(path, r"legacy storage '0' holds -1 elements, the pickle declares 2")


# ----------------------------------------------------------------------- forbidden code


def _call(module, name, *args):
    return p_global(module, name) + p_tuple(*args) + b"R"


_TOUCH = "open({marker!r}, 'w').close()"
FORBIDDEN = {  # what the payload names -> the payload, given the marker file it would create
    "os.system": lambda m: _call("os", "system", p_str(f"touch {m}")),
    "posix.system": lambda m: _call("posix", "system", p_str(f"touch {m}")),
    "builtins.eval": lambda m: _call("builtins", "eval", p_str(_TOUCH.format(marker=str(m)))),
    "__builtin__.eval": lambda m: _call("__builtin__", "eval",
                                        p_str(_TOUCH.format(marker=str(m)))),
    "builtins.getattr": lambda m: _call("builtins", "getattr",
                                        p_global("torch._utils", "_rebuild_tensor"),
                                        p_str("__globals__")),
    "builtins.exec": lambda m: p_stack_global("builtins", "exec") + p_tuple(
        p_str(_TOUCH.format(marker=str(m)))) + b"R",
    "torch._utils._rebuild_tensor.__globals__": lambda m: p_stack_global(
        "torch._utils", "_rebuild_tensor.__globals__"),
    "os.system (INST)": lambda m: b"(" + p_str(f"touch {m}") + b"ios\nsystem\n",
    "torch.load": lambda m: _call("torch", "load", p_str(str(m))),
    "collections.OrderedDict.fromkeys": lambda m: _call("collections", "OrderedDict.fromkeys",
                                                        p_tuple()),
    "torch.nn.modules.linear.Linear": lambda m: _call("torch.nn.modules.linear", "Linear",
                                                      p_int(2), p_int(2)),
}


@pytest.mark.parametrize("named", FORBIDDEN)
@pytest.mark.parametrize("placement", ["top", "in_state_dict"])
def test_forbidden_globals_are_refused_before_they_run(tmp_path, named, placement):
    marker = tmp_path / "pwned"
    payload = FORBIDDEN[named](marker)
    pkl = (b"\x80\x02" + payload + b"." if placement == "top"
           else state_pickle({"w": flat_tensor("0", 1), "evil": payload}))
    refused = named.split()[0].replace("__builtin__", "builtins")
    _refused(checkpoint_zip(tmp_path / "e.pth", pkl, {"0": bytes(4)}),
             f"refusing to load `{re.escape(refused)}`", UnsafeCheckpointError)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    _call("collections", "OrderedDict", p_int(1)),                       # not an iterable
    _call("torch._utils", "_rebuild_tensor_v2"),                          # no arguments
    _call("torch._utils", "_rebuild_tensor_v2", *[b"N"] * 9),             # too many
    _call("torch._tensor", "_rebuild_from_type_v2", p_global("torch._utils", "_rebuild_parameter"),
          p_global("torch", "Tensor"), p_tuple(), b"N"),                  # not a tensor rebuild
    _call("torch._utils", "_rebuild_parameter", p_str("x"), b"\x89", b"}"),  # data not a tensor
    p_global("collections", "OrderedDict") + p_tuple() + b"\x81",         # NEWOBJ on a non-type
    b"\x82\x01",                                                           # EXT1: registry code
    p_global("torch", "FloatStorage") + b"}" + b"b",                      # BUILD on a stand-in
])
def test_allowed_callables_with_wrong_arguments(tmp_path, payload):
    pkl = state_pickle({"w": flat_tensor("0", 1), "x": payload})
    _refused(checkpoint_zip(tmp_path / "a.pth", pkl, {"0": bytes(4)}),
             r"data.pkl is corrupt or not a tensor checkpoint")


_P61 = (1 << 61) - 1  # CPython hashes an int to its value modulo this prime


@pytest.mark.parametrize("keys", [
    b"".join(p_int(k * _P61) + b"N" for k in range(1, 20_000)),
    p_tuple(p_int(1), p_int(2)) + b"N",
    b"]N",
], ids=["colliding_ints", "tuple", "list"])
def test_dict_keys_that_could_collide_are_refused(tmp_path, keys):
    """20k ints equal modulo 2**61 - 1 share one hash: inserting them took seconds, 300k keys
    (a 6 MB file) would take most of an hour. Only strings, bytes and numbers of at most 64
    bits (whose hashes an attacker cannot pile up) may be dict keys or set members."""
    pkl = b"\x80\x02}(" + keys + b"u."
    _refused(checkpoint_zip(tmp_path / "k.pth", pkl),
             r"SETITEMS at byte \d+ hashes a dict key .* crafted to collide", UnsafeCheckpointError)


def test_ordered_dict_takes_no_items_as_arguments(tmp_path):
    """``OrderedDict(items)`` would hash the items unchecked; pickle always uses SETITEMS."""
    items = b"]" + p_tuple(p_tuple(p_int(1), p_int(2)), b"N") + b"a"  # [((1, 2), None)]
    pkl = b"\x80\x02" + _call("collections", "OrderedDict", items) + b"."
    _refused(checkpoint_zip(tmp_path / "o.pth", pkl),
             r"corrupt or not a tensor checkpoint: .*_new_ordered_dict\(\) takes 0 positional")


def test_refusal_message_is_bounded(tmp_path):
    long_name = "x" * (1 << 20)
    pkl = b"\x80\x02" + p_global("os", long_name) + b"."
    message = _refused(checkpoint_zip(tmp_path / "l.pth", pkl), r"refusing to load `os\.x+\.\.\.`",
                       UnsafeCheckpointError)
    assert len(message) < 1000


# ----------------------------------------------------------------------------- fuzzing


def _genuine(tmp_path, torch):
    state = {"conv.weight": torch.randn(4, 3, 3, 3), "bn.running_var": torch.rand(4),
             "bn.num_batches_tracked": torch.tensor(7), "half": torch.randn(5).to(torch.bfloat16)}
    zipped, legacy = tmp_path / "g.pth", tmp_path / "gl.pth"
    torch.save(state, zipped)
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    return zipped, legacy


@pytest.mark.torch
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_random_damage_never_escapes_as_another_error(tmp_path, fmt, torch):
    """Byte flips, truncations and splices of a genuine file: each load returns arrays or
    raises one ValueError naming the file (no KeyError, struct.error, MemoryError, ...)."""
    source = _genuine(tmp_path, torch)[fmt == "legacy"].read_bytes()
    rng = random.Random(fmt)
    path = tmp_path / "fuzz.pth"
    for _ in range(300):
        data = bytearray(source)
        for _ in range(rng.choice([1, 2, 8])):
            i = rng.randrange(len(data))
            action = rng.random()
            if action < 0.6:
                data[i] = rng.randrange(256)
            elif action < 0.8:
                data[i:i + 8] = struct.pack("<Q", rng.choice([0, 1 << 31, 1 << 62, (1 << 64) - 1]))
            else:
                del data[i:]
        path.write_bytes(bytes(data) or b"\x80")
        try:
            load_pth(path)
        except ValueError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc), exc


# ------------------------------------------------------------- genuine files still load


def _resnet152_like_state(torch):
    """torchvision ResNet-152's 932 state-dict keys (what the pickle limits depend on), with
    tiny tensors."""
    state, bn = {}, ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def add_bn(prefix):
        for part in bn:
            state[f"{prefix}.{part}"] = (torch.tensor(0) if part == "num_batches_tracked"
                                         else torch.rand(2))

    state["conv1.weight"] = torch.rand(2, 3, 1, 1)
    add_bn("bn1")
    for stage, blocks in enumerate((3, 8, 36, 3), start=1):
        for b in range(blocks):
            for c in (1, 2, 3):
                state[f"layer{stage}.{b}.conv{c}.weight"] = torch.rand(2, 2, 1, 1)
                add_bn(f"layer{stage}.{b}.bn{c}")
            if b == 0:
                state[f"layer{stage}.{b}.downsample.0.weight"] = torch.rand(2, 2, 1, 1)
                add_bn(f"layer{stage}.{b}.downsample.1")
    state["fc.weight"], state["fc.bias"] = torch.rand(10, 2), torch.rand(10)
    assert len(state) == 932
    return state


@pytest.mark.torch
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_resnet152_training_checkpoint_with_optimizer_state_loads(tmp_path, fmt, torch):
    state = _resnet152_like_state(torch)
    params = [v for k, v in state.items() if "running" not in k and "num_batches" not in k]
    optimizer = {"state": {i: {"step": torch.tensor(3.0), "exp_avg": torch.zeros_like(p),
                               "exp_avg_sq": torch.zeros_like(p)} for i, p in enumerate(params)},
                 "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999),
                                   "params": list(range(len(params)))}]}
    path = tmp_path / "train.pth"
    torch.save({"model": state, "optimizer": optimizer, "epoch": 90, "seed": (1 << 127) + 1},
               path, _use_new_zipfile_serialization=fmt == "zip")
    if fmt == "zip":  # the pickle limits leave at least 10x headroom over this checkpoint
        with zipfile.ZipFile(path) as archive:
            pkl = archive.read("train/data.pkl")
        assert 10 * len(pkl) < limits.MAX_PICKLE_BYTES
        assert 10 * sum(1 for _ in pickletools.genops(pkl)) < limits.MAX_PICKLE_OPCODES
    loaded = load_pth(path)
    assert list(loaded) == list(state)
    np.testing.assert_array_equal(loaded["fc.weight"], state["fc.weight"].numpy())


@pytest.mark.torch
def test_bfloat16_tied_weights_above_the_floor_load(tmp_path, torch):
    """bfloat16 widening (2x) of a storage viewed twice (tied weights): 4x, the limit."""
    embedding = torch.randn(2064, 4096).to(torch.bfloat16)  # just over 16 MiB of bfloat16
    state = {"embed.weight": embedding, "head.weight": embedding}
    path = tmp_path / "tied.pth"
    torch.save(state, path)
    loaded = load_pth(path)
    storage_bytes = embedding.numel() * 2
    assert sum(a.nbytes for a in loaded.values()) == limits.MAX_VIEW_FACTOR * storage_bytes
    assert storage_bytes > limits.MATERIALISE_FLOOR_BYTES
    for array in loaded.values():
        np.testing.assert_array_equal(array, embedding.float().numpy())


def test_in_memory_pickle_scan_returns_the_pickle_unchanged():
    data = pickle.dumps({"a": [1, 2.5, "x", (1,), b"y", {3}, frozenset({4})]}, protocol=5)
    stream = io.BytesIO(data + b"trailing storage bytes")
    assert limits.scan_pickle(stream, "f.pth", "pickle") == data
    assert stream.read() == b"trailing storage bytes"
