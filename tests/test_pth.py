"""The torch-free .pth reader: every dtype and layout torch.save writes, and every way to fail.

Checkpoints are written by the real `torch.save` (tests marked `torch`), or crafted with the same
layout without torch (`tests/support/pth_writer.py`), to produce malicious or inconsistent files
torch itself would never write.
"""

import collections
import io
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest

from keras_vggres.weights.torch_pth import UnsafeCheckpointError, load_pth
from tests.support.pth_writer import (CheckpointPickler, StorageRef, TensorRef,
                                      pickle_checkpoint, save_state_dict, write_checkpoint_zip)

DTYPES = ["float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8",
          "bool"]
FORMATS = {"zip": {}, "legacy": {"_use_new_zipfile_serialization": False}}


def _save(torch, obj, path, fmt="zip"):
    torch.save(obj, path, **FORMATS[fmt])
    return path


def _expected(tensor):
    """What load_pth must return for a tensor: its values, bfloat16 widened to float32."""
    tensor = tensor.detach()
    return (tensor.float() if str(tensor.dtype) == "torch.bfloat16" else tensor).numpy()


def _assert_same(loaded, reference):
    assert list(loaded) == list(reference)
    for key, tensor in reference.items():
        expected = _expected(tensor)
        assert loaded[key].dtype == expected.dtype, key
        assert loaded[key].shape == expected.shape, key
        np.testing.assert_array_equal(loaded[key], expected, err_msg=key)
        assert loaded[key].flags.c_contiguous and loaded[key].flags.writeable


def _random(torch, dtype, shape, seed=0):
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 100).to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=g).to(dtype)


# ------------------------------------------------------------------------------ round trips


@pytest.mark.torch
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_each_dtype(tmp_path, dtype, fmt, torch):
    reference = {"x": _random(torch, dtype, (3, 5)), "scalar": _random(torch, dtype, ()),
                 "empty": _random(torch, dtype, (0, 4))}
    _assert_same(load_pth(_save(torch, reference, tmp_path / "x.pth", fmt)), reference)


@pytest.mark.torch
def test_bfloat16_is_widened_exactly(tmp_path, torch):
    values = torch.tensor([1.0, -2.5, 3.140625, 1e-38, float("inf"), 65280.0, -0.0],
                          dtype=torch.bfloat16)
    loaded = load_pth(_save(torch, {"b": values}, tmp_path / "b.pth"))["b"]
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded.view(np.uint32), values.float().numpy().view(np.uint32))


@pytest.mark.torch
@pytest.mark.parametrize("fmt", FORMATS)
def test_non_contiguous_views_are_read_through_their_strides(tmp_path, fmt, torch):
    base = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    reference = {"transposed": base[0, 0].t(), "permuted": base.permute(3, 1, 0, 2),
                 "stepped": base[:, :, ::2, 1::2]}
    assert not any(t.is_contiguous() for t in reference.values())
    _assert_same(load_pth(_save(torch, reference, tmp_path / "v.pth", fmt)), reference)


@pytest.mark.torch
@pytest.mark.parametrize("fmt", FORMATS)
def test_tensors_sharing_one_storage_with_offsets(tmp_path, fmt, torch):
    base = torch.randn(6, 4)
    reference = {"row2": base[2], "rows3_5": base[3:5], "col1": base[:, 1], "whole": base}
    _assert_same(load_pth(_save(torch, reference, tmp_path / "s.pth", fmt)), reference)
    loaded = load_pth(tmp_path / "s.pth")
    loaded["row2"][:] = 0  # independent copies, not views of one buffer
    assert loaded["whole"][2].any()


@pytest.mark.torch
def test_each_storage_is_read_once(tmp_path, monkeypatch, torch):
    base = torch.randn(8, 8)
    path = _save(torch, {f"row{i}": base[i] for i in range(8)}, tmp_path / "once.pth")
    reads = []
    original = zipfile.ZipFile.open  # ZipFile.read opens too: every record read passes here
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: reads.append(
        getattr(name, "filename", name)) or original(self, name, *a, **k))
    assert len(load_pth(path)) == 8
    assert sum("/data/" in name for name in reads) == 1


@pytest.mark.torch
@pytest.mark.parametrize("fmt", FORMATS)
def test_module_state_dict_keeps_order_and_buffers(tmp_path, fmt, torch):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                 torch.nn.Linear(4, 2))
    reference = module.state_dict()
    assert isinstance(reference, collections.OrderedDict)
    loaded = load_pth(_save(torch, reference, tmp_path / "m.pth", fmt))
    _assert_same(loaded, reference)
    assert type(loaded) is dict
    assert loaded["1.num_batches_tracked"].dtype == np.int64


@pytest.mark.torch
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_state_dict_wrapped_in_a_training_checkpoint(tmp_path, wrapper, fmt, torch):
    reference = torch.nn.Linear(3, 2).state_dict()
    checkpoint = {"optimizer": {"state": {0: {"momentum": torch.ones(3)}}}, wrapper: reference,
                  "epoch": 7, "arch": "resnet18", "best_acc": 0.5}
    _assert_same(load_pth(_save(torch, checkpoint, tmp_path / "w.pth", fmt)), reference)


@pytest.mark.torch
def test_parameters_and_tensors_with_attributes(tmp_path, torch):
    tagged = torch.ones(3)
    tagged.note = "kept by torch as tensor state"
    reference = {"param": torch.nn.Parameter(torch.randn(2, 2)), "tagged": tagged}
    _assert_same(load_pth(_save(torch, reference, tmp_path / "p.pth")), reference)


# ------------------------------------------------------------------------- crafted files


_Storage, _Tensor, _pickle, _write_zip = (StorageRef, TensorRef, pickle_checkpoint,
                                          write_checkpoint_zip)


def _transposed_view(tmp_path):
    """A 2x2 view (offset 1, strides (1, 2)) of a 6-element storage, crafted without torch."""
    storage = _Storage("0", "FloatStorage", 6)
    state = collections.OrderedDict(w=_Tensor(storage, 1, (2, 2), (1, 2)))
    return _write_zip(tmp_path / "c.pth", _pickle(state),
                      {"0": np.arange(6, dtype="<f4").tobytes()})


def test_crafted_view_loads(tmp_path):
    np.testing.assert_array_equal(load_pth(_transposed_view(tmp_path))["w"], [[1, 3], [2, 4]])


def test_written_state_dict_round_trips(tmp_path):
    state = collections.OrderedDict(
        w=np.arange(24, dtype=np.float32).reshape(2, 3, 4), n=np.array(7, np.int64),
        h=np.array([1.5, -2], np.float16), t=np.arange(6, dtype=np.float64).reshape(2, 3).T,
        b=np.array([True, False]), e=np.zeros((0, 3), np.int8))
    loaded = load_pth(save_state_dict(state, tmp_path / "s.pth"))
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, key
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)


@pytest.mark.torch
def test_crafted_writer_matches_torch(tmp_path, torch):
    path = _transposed_view(tmp_path)
    np.testing.assert_array_equal(load_pth(path)["w"], [[1, 3], [2, 4]])
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.tensor([[1., 3], [2, 4]]))


def test_big_endian_checkpoint(tmp_path):
    storages = {"0": _Storage("0", "DoubleStorage", 3), "1": _Storage("1", "IntStorage", 2)}
    state = {"d": _Tensor(storages["0"], 0, (3,), (1,)), "i": _Tensor(storages["1"], 0, (2,), (1,))}
    path = _write_zip(tmp_path / "be.pth", _pickle(state),
                      {"0": np.array([1.5, -2, 3], ">f8").tobytes(),
                       "1": np.array([7, -9], ">i4").tobytes()}, byteorder=b"big")
    loaded = load_pth(path)
    np.testing.assert_array_equal(loaded["d"], [1.5, -2, 3])
    np.testing.assert_array_equal(loaded["i"], [7, -9])
    assert loaded["d"].dtype == np.float64 and loaded["d"].dtype.isnative


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Exec:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def _payloads(marker):
    return {
        "os.system": (_System(f"touch {marker}"), "posix.system"),
        "builtins.exec": (_Exec(f"open({str(marker)!r}, 'w').close()"), "builtins.exec"),
    }


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec"])
@pytest.mark.parametrize("placement", ["alone", "inside_a_state_dict"])
def test_malicious_zip_pickle_is_refused_before_it_runs(tmp_path, payload, placement):
    marker = tmp_path / "pwned"
    evil, refused = _payloads(marker)[payload]
    storage = _Storage("0", "FloatStorage", 2)
    obj = evil if placement == "alone" else collections.OrderedDict(
        w=_Tensor(storage, 0, (2,), (1,)), evil=evil)
    path = _write_zip(tmp_path / "evil.pth", _pickle(obj), {"0": bytes(8)})
    with pytest.raises(UnsafeCheckpointError, match=refused.replace(".", r"\.")) as info:
        load_pth(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_malicious_legacy_pickle_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_legacy.pth"
    path.write_bytes(pickle.dumps(_System(f"touch {marker}"), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system"):
        load_pth(path)
    assert not marker.exists()


@pytest.mark.torch
def test_whole_model_pickle_is_refused(tmp_path, torch):
    path = _save(torch, torch.nn.Linear(2, 2), tmp_path / "model.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"torch\.nn\.modules\.linear\.Linear"):
        load_pth(path)


def test_non_storage_persistent_id_is_refused(tmp_path):
    class ModulePid(CheckpointPickler):
        def persistent_id(self, obj):
            return ("module", "source code", "x.py") if obj == "M" else None

    buffer = io.BytesIO()
    ModulePid(buffer, protocol=2).dump({"m": "M"})
    with pytest.raises(UnsafeCheckpointError, match="module"):
        load_pth(_write_zip(tmp_path / "pid.pth", buffer.getvalue()))


# ------------------------------------------------------------------------- broken files


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pth(tmp_path / "nope.pth")


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"just some text, definitely not a checkpoint\n", "not a PyTorch checkpoint"),
    (b"\x89HDF\r\n\x1a\n" + bytes(600), "not a PyTorch checkpoint"),
])
def test_not_a_checkpoint(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        load_pth(path)
    assert str(path) in str(info.value)


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint.*data.pkl"):
        load_pth(path)


@pytest.mark.torch
@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file(tmp_path, fmt, torch):
    path = _save(torch, {"w": torch.randn(64, 64)}, tmp_path / "t.pth", fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match="truncated") as info:
        load_pth(path)
    assert str(path) in str(info.value)


def test_missing_storage_record(tmp_path):
    storage = _Storage("0", "FloatStorage", 4)
    path = _write_zip(tmp_path / "m.pth", _pickle({"w": _Tensor(storage, 0, (4,), (1,))}))
    with pytest.raises(ValueError, match=r"storage record 'archive/data/0' is missing"):
        load_pth(path)


def test_storage_shorter_than_declared(tmp_path):
    storage = _Storage("0", "FloatStorage", 4)
    path = _write_zip(tmp_path / "s.pth", _pickle({"w": _Tensor(storage, 0, (4,), (1,))}),
                      {"0": bytes(12)})
    with pytest.raises(ValueError, match=r"storage '0' is truncated: it holds 12 bytes.*need 16"):
        load_pth(path)


@pytest.mark.parametrize("offset, size, stride", [(0, (5,), (1,)), (3, (2,), (1,)),
                                                   (0, (2, 3), (3, 1))])
def test_view_beyond_its_storage(tmp_path, offset, size, stride):
    storage = _Storage("0", "FloatStorage", 4)
    path = _write_zip(tmp_path / "v.pth", _pickle({"w": _Tensor(storage, offset, size, stride)}),
                      {"0": bytes(16)})
    with pytest.raises(ValueError, match=r"tensor 'w'.*reaches element \d+ of storage '0'"):
        load_pth(path)


def test_expanded_view_is_refused_before_it_is_materialised(tmp_path):
    """A 4-element storage viewed as 10^6 x 10^6 (stride 0) would need 4 TB: refused unread."""
    storage = _Storage("0", "FloatStorage", 4)
    huge = {"w": _Tensor(storage, 0, (10**6, 10**6), (0, 0))}
    path = _write_zip(tmp_path / "e.pth", _pickle(huge), {"0": bytes(16)})
    with pytest.raises(ValueError, match=r"tensor 'w'.* has 1000000000000 elements but its "
                                         r"storage '0' only 4: an expanded view"):
        load_pth(path)


@pytest.mark.torch
def test_expanded_view_saved_by_torch_is_refused(tmp_path, torch):
    real = _save(torch, {"w": torch.ones(1).expand(10)}, tmp_path / "torch_expanded.pth")
    with pytest.raises(ValueError, match="an expanded view is not a weight"):
        load_pth(real)


def _deflated(path, records):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in records.items():
            zf.writestr(name, data)
    return path


def test_deflate_bomb_is_refused_without_inflating_it(tmp_path, monkeypatch):
    numel = 4 << 20                                       # 16 MiB of float32 zeros
    pkl = _pickle({"w": _Tensor(_Storage("0", "FloatStorage", numel), 0, (numel,), (1,))})
    path = _deflated(tmp_path / "bomb.pth", {"archive/data.pkl": pkl,
                                             "archive/data/0": bytes(4 * numel)})
    assert os.path.getsize(path) < 100_000
    opened, real_open = [], zipfile.ZipFile.open

    def spy(archive, name, *args, **kwargs):
        opened.append(getattr(name, "filename", name))
        return real_open(archive, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    with pytest.raises(ValueError, match=r"record 'archive/data/0' is compressed \d+x .*"
                                         r"expands at most 64x"):
        load_pth(path)
    assert "archive/data.pkl" in opened and "archive/data/0" not in opened


def test_compressed_but_plausible_checkpoint_loads(tmp_path):
    """Re-zipped with deflate (random weights barely compress): still read, values exact."""
    rng = np.random.default_rng(0)
    reference = {"w": rng.standard_normal((512, 1024), dtype=np.float32) * 100,
                 "b": np.zeros(7, np.float32)}
    original = save_state_dict(reference, tmp_path / "stored.pth")
    with zipfile.ZipFile(original) as zf:
        records = {name: zf.read(name) for name in zf.namelist()}
    loaded = load_pth(_deflated(tmp_path / "deflated.pth", records))
    assert list(loaded) == list(reference)
    for key, value in reference.items():
        np.testing.assert_array_equal(loaded[key], value)


@pytest.mark.parametrize("state", [{"stride": (-4,)}, (None, {"stride": (-4,)}),
                                   {"shape": (10**9,)}, ("stride", (-4,))])
def test_pickle_cannot_rewrite_a_validated_tensor(tmp_path, state):
    storage = _Storage("0", "FloatStorage", 4)
    path = _write_zip(tmp_path / "b.pth", _pickle({"w": _Tensor(storage, 3, (4,), (1,), state)}),
                      {"0": bytes(16)})
    with pytest.raises(ValueError, match="corrupt or not a tensor checkpoint"):
        load_pth(path)


@pytest.mark.parametrize("target", [b"torch._utils\n_rebuild_tensor_v2", b"collections\nOrderedDict",
                                    b"torch\nFloatStorage"])
@pytest.mark.parametrize("state", [b"}X\x01\x00\x00\x00xK\x01s",  # {"x": 1}
                                   b"N}X\x08\x00\x00\x00__call__K\x01s\x86"])  # slot state
def test_pickle_cannot_modify_allowlisted_names(tmp_path, target, state):
    """GLOBAL <allowed name>, then BUILD with a state: would patch our stand-ins for later loads."""
    path = _write_zip(tmp_path / "b.pth", b"\x80\x02c" + target + b"\n" + state + b"b.")
    with pytest.raises(ValueError, match="corrupt or not a tensor checkpoint"):
        load_pth(path)
    test_crafted_view_loads(tmp_path)  # the stand-ins still work


def test_storage_declared_with_two_sizes(tmp_path):
    state = {"a": _Tensor(_Storage("0", "FloatStorage", 4), 0, (4,), (1,)),
             "b": _Tensor(_Storage("0", "FloatStorage", 8), 0, (8,), (1,))}
    path = _write_zip(tmp_path / "d.pth", _pickle(state), {"0": bytes(32)})
    with pytest.raises(ValueError, match="declared twice"):
        load_pth(path)


@pytest.mark.parametrize("obj, message", [
    ({"epoch": 3, "arch": "resnet"}, "no tensor state dict found"),
    ([1, 2, 3], "no tensor state dict found"),
    ({"w": "TENSOR", "note": "text"}, "entry 'note' holds str"),
])
def test_not_a_state_dict(tmp_path, obj, message):
    storage = _Storage("0", "FloatStorage", 1)
    if isinstance(obj, dict) and "w" in obj:
        obj = {**obj, "w": _Tensor(storage, 0, (1,), (1,))}
    path = _write_zip(tmp_path / "n.pth", _pickle(obj), {"0": bytes(4)})
    with pytest.raises(ValueError, match=message):
        load_pth(path)


def test_tar_format_of_torch_before_0_4_is_refused_with_advice(tmp_path):
    path = tmp_path / "old.pth"
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("pickle")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"data"))
    with pytest.raises(ValueError, match="tar checkpoint format.*not supported.*Re-save"):
        load_pth(path)
