"""Write `.pth` checkpoints as `torch.save` does, from NumPy arrays, without PyTorch.

A torch.save zip holds `<archive>/data.pkl` (protocol 2: the state dict, each tensor pickled
as ``torch._utils._rebuild_tensor_v2(<storage>, offset, size, stride, False, OrderedDict())``
with the storage as a persistent id ``("storage", torch.FloatStorage, key, "cpu", numel)``),
`<archive>/byteorder`, `<archive>/version` and one `<archive>/data/<key>` record of raw
little-endian bytes per storage. The torch globals are written by name (`GlobalRef`), so this
module imports nothing from torch; `save_state_dict` files load with `torch.load(...,
weights_only=True)` (checked by tests/test_torch_parity.py when PyTorch is installed).
`CheckpointPickler`, `StorageRef` and `TensorRef` also let tests craft odd or hostile files.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from collections.abc import Mapping

import numpy as np

STORAGE_TYPES = {  # NumPy dtype -> torch's legacy storage class, as torch.save names it
    np.dtype("float32"): "FloatStorage", np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage", np.dtype("int16"): "ShortStorage",
    np.dtype("int8"): "CharStorage", np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}


class GlobalRef:
    """A module-level name (``torch.FloatStorage``) pickled by name, with no import."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's REDUCE wants a callable; this one is never called
        raise TypeError(f"{self.module}.{self.name} is only a name to pickle")


REBUILD_TENSOR = GlobalRef("torch._utils", "_rebuild_tensor_v2")


class StorageRef:
    """One storage record: pickled as torch.save's persistent id for it."""

    def __init__(self, key, storage_type, numel):
        self.key, self.storage_type, self.numel = key, storage_type, numel


class TensorRef:
    """A view of a storage: pickled as ``_rebuild_tensor_v2`` with these arguments; a
    ``build_state`` adds a BUILD on the rebuilt tensor (as tensor attributes do)."""

    def __init__(self, storage, offset, size, stride, build_state=None):
        self.args = (storage, offset, tuple(size), tuple(stride), False,
                     collections.OrderedDict())
        self.build_state = build_state


class CheckpointPickler(pickle._Pickler):  # the Python pickler: its dispatch table is extendable
    """Pickles `StorageRef` / `TensorRef` / `GlobalRef` exactly as torch.save pickles storages,
    tensors and the torch names they refer to (protocol 2 GLOBAL opcodes)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_global_ref(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[GlobalRef] = save_global_ref

    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            storage_type = obj.storage_type
            if isinstance(storage_type, str):
                storage_type = GlobalRef("torch", storage_type)
            return ("storage", storage_type, obj.key, "cpu", obj.numel)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, TensorRef):
            return REBUILD_TENSOR, obj.args, obj.build_state
        return NotImplemented


def pickle_checkpoint(obj) -> bytes:
    """`obj` (dicts, lists, numbers, strings, `TensorRef`s...) as torch.save's data.pkl."""
    buffer = io.BytesIO()
    CheckpointPickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def write_checkpoint_zip(path, data_pkl, records=None, *, byteorder=b"little",
                         archive="archive"):
    """A zip laid out as torch.save writes it; ``records``: ``{storage key: bytes}``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{archive}/data.pkl", data_pkl)
        zf.writestr(f"{archive}/byteorder", byteorder)
        for key, data in (records or {}).items():
            zf.writestr(f"{archive}/data/{key}", data)
        zf.writestr(f"{archive}/version", b"3\n")
    return path


def save_state_dict(state_dict: Mapping[str, np.ndarray], path):
    """`torch.save(OrderedDict(state_dict), path)` for NumPy arrays: one contiguous storage per
    tensor, keys in order. Returns `path`."""
    tensors, records = collections.OrderedDict(), {}
    for index, (name, array) in enumerate(state_dict.items()):
        array = np.asarray(array, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        storage = StorageRef(str(index), STORAGE_TYPES[array.dtype.newbyteorder("=")], array.size)
        strides = tuple(s // array.itemsize for s in array.strides)
        tensors[name] = TensorRef(storage, 0, array.shape, strides)
        records[str(index)] = little.tobytes()
    return write_checkpoint_zip(path, pickle_checkpoint(tensors), records)
