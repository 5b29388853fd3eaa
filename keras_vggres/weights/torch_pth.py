"""Read PyTorch ``.pth`` checkpoints into NumPy arrays, without torch and without running pickles.

``torch.save`` writes a pickle whose tensors point at raw storages kept beside it (zip format,
the default since PyTorch 1.6) or after it (the legacy stream format). A plain ``pickle.load``
would import and call whatever the file names, so the pickle is read by ``_SafeUnpickler``: it
resolves only the handful of names a tensor state dict uses, each to a local stand-in that
merely records what the tensor looks like. Any other name (``os.system``, ``builtins.exec``, a
model class, ...) raises ``UnsafeCheckpointError`` before it is called. Tensor data are read
afterwards, one storage at a time, and copied into contiguous arrays.

The file is untrusted in its sizes too: `_pth_limits` checks every pickle before it is unpickled
(size, opcodes, nesting depth) and bounds the bytes inflated from zip records and the bytes
materialised from storages, so a small hostile file cannot take much memory or crash the
process. Every problem ends in one ``ValueError`` naming the file (``UnsafeCheckpointError``
for code and resource limits).
"""

from __future__ import annotations

import collections
import io
import itertools
import math
import os
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from keras_vggres.weights._pth_limits import (
    MAX_INT64, MAX_TENSOR_DIMS, RecordReader, UnsafeCheckpointError, brief,
    check_materialised, clip, check_view, scan_pickle,
)

__all__ = ["UnsafeCheckpointError", "load_pth"]

# torch storage class and dtype names -> NumPy dtype (little-endian). bfloat16 has no NumPy
# dtype: its raw 16-bit words are read as uint16 and widened to float32 in `_bf16_to_f32`.
_DTYPES = {
    "float32": "<f4", "float64": "<f8", "float16": "<f2", "bfloat16": "<u2",
    "int64": "<i8", "int32": "<i4", "int16": "<i2", "int8": "i1", "uint8": "u1",
    "bool": "?", "complex64": "<c8", "complex128": "<c16",
}
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_WRAPPER_KEYS = ("state_dict", "model")
_BYTEORDER_MAX_BYTES = 16  # "little" or "big", maybe with a newline
_RESAVE_HINT = "Re-save it with a current PyTorch: `torch.save(torch.load(path), new_path)`."


# ---------------------------------------------------------------------------------------------
# Stand-ins: what the restricted unpickler hands back instead of torch objects. Immutable
# tuples without __setstate__ or __dict__, so a pickle's BUILD opcode cannot rewrite a
# validated shape or stride (a frozen slotted dataclass would: it gets a __setstate__).


class _DType(NamedTuple):
    name: str  # a key of _DTYPES


class _StorageRef(NamedTuple):
    key: str
    dtype: _DType
    numel: int


class _TensorSpec(NamedTuple):
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _Callable:
    """An allowlisted callable that a pickle cannot modify (BUILD on a bare function could)."""

    __slots__ = ("_function",)

    def __init__(self, function):
        object.__setattr__(self, "_function", function)

    def __setattr__(self, name, value):
        raise AttributeError(f"{self!r} is read-only")

    def __call__(self, *args):
        return self._function(*args)

    def __repr__(self):
        return f"<allowlisted {self._function.__name__}>"


class _PickledOrderedDict(collections.OrderedDict):
    """``collections.OrderedDict`` that ignores pickled attributes (torch's ``_metadata``)."""

    def __setstate__(self, state):
        pass


class _TypeRef(NamedTuple):
    name: str


_TENSOR_TYPE = _TypeRef("Tensor")  # torch.Tensor / nn.Parameter as _rebuild_from_type_v2 args


def _is_int64(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT64


def _int_tuple(value, what):
    if (not isinstance(value, tuple) or len(value) > MAX_TENSOR_DIMS
            or not all(map(_is_int64, value))):
        raise ValueError(f"tensor {what} must be a tuple of at most {MAX_TENSOR_DIMS} "
                         f"non-negative int64 values, got {brief(value)}")
    return value


def _check_hooks(backward_hooks):
    if not isinstance(backward_hooks, Mapping) or backward_hooks:
        raise ValueError(f"tensor backward hooks are not supported, got {brief(backward_hooks)}")


def _rebuild_tensor(storage, storage_offset, size, stride):
    if not isinstance(storage, _StorageRef):
        raise ValueError(f"tensor storage must be a persistent storage, got {brief(storage)}")
    if not _is_int64(storage_offset):
        raise ValueError("tensor storage offset must be a non-negative int64, got "
                         f"{brief(storage_offset)}")
    shape, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(stride):
        raise ValueError(f"tensor size {shape} and stride {stride} differ in length")
    return _TensorSpec(storage, storage_offset, shape, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       metadata=None):
    _check_hooks(backward_hooks)
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    _check_hooks(backward_hooks)
    if not isinstance(data, _TensorSpec):
        raise ValueError(f"parameter data must be a tensor, got {brief(data)}")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_REBUILD_TENSOR, _REBUILD_TENSOR_V2) or new_type != _TENSOR_TYPE:
        raise ValueError(f"unsupported tensor subclass rebuild: {brief(func)}, "
                         f"{brief(new_type)}")
    return func(*args)


_REBUILD_TENSOR, _REBUILD_TENSOR_V2 = _Callable(_rebuild_tensor), _Callable(_rebuild_tensor_v2)
_ALLOWED = {
    ("collections", "OrderedDict"): _Callable(_PickledOrderedDict),
    ("torch._utils", "_rebuild_tensor"): _REBUILD_TENSOR,
    ("torch._utils", "_rebuild_tensor_v2"): _REBUILD_TENSOR_V2,
    ("torch._utils", "_rebuild_parameter"): _Callable(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Callable(_rebuild_parameter),
    ("torch._tensor", "_rebuild_from_type_v2"): _Callable(_rebuild_from_type_v2),
    ("torch", "Tensor"): _TENSOR_TYPE,
    ("torch.nn.parameter", "Parameter"): _TENSOR_TYPE,
    **{("torch", name): _DType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): _DType(name) for name in _DTYPES},
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `_ALLOWED` names and storage persistent ids.

    ``storages`` collects every storage the pickle references, by key.
    """

    def __init__(self, stream, storages):
        super().__init__(stream)
        self.storages = storages

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            module = _PY2_MODULES.get(module, module)  # protocol 2 spells builtins `__builtin__`
            raise UnsafeCheckpointError(
                f"refusing to load `{clip(module, 80)}.{clip(name, 80)}`: a weights checkpoint "
                "may only contain tensors and plain containers (dict, OrderedDict, list, numbers, "
                "strings)."
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            kind = pid[0] if isinstance(pid, tuple) and pid else pid
            raise UnsafeCheckpointError(f"refusing persistent object of kind {brief(kind)}; only "
                                        "tensor storages are allowed.")
        # zip: (tag, type, key, location, numel); legacy adds view metadata (None since 2017).
        if len(pid) not in (5, 6) or (len(pid) == 6 and pid[5] is not None):
            raise ValueError(f"unsupported storage reference {brief(pid)}")
        _, dtype, key, _location, numel = pid[:5]
        if not isinstance(dtype, _DType) or not isinstance(key, str) or "/" in key:
            raise ValueError(f"malformed storage reference {brief(pid)}")
        if not _is_int64(numel):
            raise ValueError(f"malformed storage size in {brief(pid)}")
        ref = _StorageRef(key, dtype, numel)
        if self.storages.setdefault(key, ref) != ref:
            raise ValueError(f"storage {brief(key)} is declared twice with different types or "
                             "sizes")
        return ref


def _unpickle(stream, path, what, storages=None):
    """Unpickle the pickle at ``stream``'s position, once `scan_pickle` has checked it."""
    data = io.BytesIO(scan_pickle(stream, path, what))
    try:
        return _SafeUnpickler(data, {} if storages is None else storages).load()
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(f"{path}: {exc}") from None
    # What a crafted pickle makes the unpickler or our stand-ins raise: bad opcodes or memo
    # (UnpicklingError, KeyError, IndexError), allowlisted callables called with wrong arguments
    # (TypeError, ValueError), BUILD on our read-only stand-ins (AttributeError), unhashable
    # keys. MemoryError and RecursionError cannot happen within `scan_pickle`'s limits; caught
    # here, where only the file's contents can cause them, as a last line against a crash.
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, OverflowError, MemoryError, RecursionError) as exc:
        raise ValueError(f"{path}: {what} is corrupt or not a tensor checkpoint: "
                         f"{clip(exc)}") from exc


# ---------------------------------------------------------------------------------------------
# Finding the state dict and materialising tensors.


def _find_state_dict(obj, path):
    """The ``{name: tensor}`` mapping: the object itself or its ``state_dict``/``model`` entry."""
    if isinstance(obj, Mapping) and any(isinstance(v, _TensorSpec) for v in obj.values()):
        candidate, where = obj, "the checkpoint"
    else:
        found = [k for k in _WRAPPER_KEYS
                 if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)]
        if not found:
            keys = (sorted(brief(k) for k in itertools.islice(obj, 100))[:10]
                    if isinstance(obj, Mapping) else type(obj).__name__)
            raise ValueError(
                f"{path}: no tensor state dict found; expected a mapping of tensors or a dict "
                f"with one under {list(_WRAPPER_KEYS)}, got {keys}."
            )
        candidate, where = obj[found[0]], f"checkpoint[{found[0]!r}]"
    for name, value in candidate.items():
        if not isinstance(name, str) or not isinstance(value, _TensorSpec):
            raise ValueError(
                f"{path}: {where} is not a tensor state dict: entry {brief(name)} holds "
                f"{type(value).__name__}, not a tensor."
            )
    return candidate


def _bf16_to_f32(words):
    """bfloat16 is the top half of a float32: widen exactly by shifting the bits."""
    wide = words.astype(np.uint32)
    np.left_shift(wide, 16, out=wide)  # in place: keeps 0-d arrays arrays, not scalars
    return wide.view(np.float32)


def _storage_dtype(storage, big_endian):
    dtype = np.dtype(_DTYPES[storage.dtype.name])
    return dtype.newbyteorder(">") if big_endian and dtype.itemsize > 1 else dtype


def _storage_nbytes(storage):
    return storage.numel * np.dtype(_DTYPES[storage.dtype.name]).itemsize


def _tensor_nbytes(spec):
    """Bytes of the materialised copy (bfloat16 becomes float32), as a Python int."""
    dtype_name = spec.storage.dtype.name
    itemsize = 4 if dtype_name == "bfloat16" else np.dtype(_DTYPES[dtype_name]).itemsize
    return math.prod(spec.shape) * itemsize


def _storage_array(buffer, storage, big_endian, path):
    dtype = _storage_dtype(storage, big_endian)
    need = storage.numel * dtype.itemsize
    if len(buffer) < need:
        raise ValueError(
            f"{path}: storage {brief(storage.key)} is truncated: it holds {len(buffer)} bytes but "
            f"{storage.numel} {storage.dtype.name} elements need {need}."
        )
    return np.frombuffer(buffer, dtype=dtype, count=storage.numel)


def _materialise(spec, flat):
    """A contiguous native-endian copy of ``spec``'s view into the 1-D storage array ``flat``."""
    dtype = flat.dtype.newbyteorder("=")
    if 0 in spec.shape:
        array = np.zeros(spec.shape, dtype=dtype)
    else:  # `check_view` has placed the view inside the storage
        # The stride of a size-1 dimension is never used and may be any int64: zero it, so
        # that every byte stride fits in a C long (the others are below the storage's size).
        strides = tuple(s * flat.itemsize if n > 1 else 0
                        for n, s in zip(spec.shape, spec.stride))
        view = np.lib.stride_tricks.as_strided(flat[spec.offset:], shape=spec.shape,
                                               strides=strides, writeable=False)
        array = np.array(view, dtype=dtype, order="C")  # not ascontiguousarray: keeps 0-d
    return _bf16_to_f32(array) if spec.storage.dtype.name == "bfloat16" else array


def _tensors(state, read_storages, path):
    """Materialise every tensor, one storage at a time, each storage read once.

    ``read_storages(wanted)`` yields ``(key, 1-D array)`` for each storage in ``wanted``; only
    one storage buffer is alive at a time besides the finished copies. The copies' total size is
    checked against the storages' before anything is read.
    """
    wanted = {spec.storage.key: spec.storage for spec in state.values()}
    for name, spec in state.items():
        check_view(name, spec, path)
    check_materialised(sum(map(_tensor_nbytes, state.values())),
                       sum(map(_storage_nbytes, wanted.values())), path)
    users = {}
    for name, spec in state.items():
        users.setdefault(spec.storage.key, []).append(name)
    arrays = {}
    try:
        for key, flat in read_storages(wanted):
            for name in users.pop(key):
                arrays[name] = _materialise(state[name], flat)
    except MemoryError:  # sizes passed the limits, yet this machine cannot hold the copies
        raise ValueError(f"{path}: not enough memory to load its {len(state)} tensors (the file "
                         "is within limits; the machine is short of memory).") from None
    if users:
        raise ValueError(f"{path}: storage records {sorted(users)[:5]} are missing.")
    return {name: arrays[name] for name in state}


# ---------------------------------------------------------------------------------------------
# Container formats.


def _open_zip(path):
    try:
        return zipfile.ZipFile(path)
    # zipfile parsing the central directory: damaged or inconsistent records (BadZipFile,
    # struct.error), names not in their declared encoding (UnicodeDecodeError, a ValueError),
    # versions or features it does not implement (NotImplementedError).
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, struct.error, ValueError,
            NotImplementedError) as exc:
        raise ValueError(f"{path}: truncated or corrupt zip checkpoint: "
                         f"{clip(exc)}") from exc


def _load_zip(path):
    with _open_zip(path) as archive:
        names = set(archive.namelist())
        if len(names) != len(archive.namelist()):
            counts = collections.Counter(archive.namelist())
            twice = sorted(n for n, count in counts.items() if count > 1)[:5]
            raise ValueError(f"{path}: corrupt zip checkpoint: records {twice} appear twice.")
        pickles = sorted(n for n in names if n.count("/") == 1 and n.endswith("/data.pkl"))
        if len(pickles) != 1:
            raise ValueError(f"{path}: not a PyTorch checkpoint: expected one "
                             f"'<archive>/data.pkl' record, found {pickles[:5] or 'none'}.")
        prefix = pickles[0][: -len("data.pkl")]
        records = RecordReader(archive, path, os.path.getsize(path))
        data_pkl = io.BytesIO(records.read_pickle(pickles[0]))  # the record read is freed
        state = _find_state_dict(_unpickle(data_pkl, path, "data.pkl"), path)
        del data_pkl
        big_endian = _zip_byteorder(records, f"{prefix}byteorder", names, path) == "big"

        def read_storages(wanted):
            for key, storage in wanted.items():
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise ValueError(f"{path}: storage record {record!r} is missing "
                                     "(truncated or corrupt checkpoint).")
                data = records.read(record, _storage_nbytes(storage), whole=False)
                yield key, _storage_array(data, storage, big_endian, path)

        return _tensors(state, read_storages, path)


def _zip_byteorder(records, record, names, path):
    if record not in names:
        return "little"
    data = records.read(record, _BYTEORDER_MAX_BYTES, whole=True)
    order = data.decode("ascii", "replace").strip()
    if order not in ("little", "big"):
        raise ValueError(f"{path}: unknown byteorder record {brief(order)}; expected 'little' "
                         "or 'big'.")
    return order


def _load_legacy(path):
    """The pre-1.6 stream: magic, protocol, sys_info, the pickle, its storage keys, then data."""
    with open(path, "rb") as stream:
        magic = _unpickle(stream, path, "legacy header")
        protocol = _unpickle(stream, path, "legacy header")
        if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL:
            raise ValueError(f"{path}: not a PyTorch checkpoint (unrecognised legacy header).")
        sys_info = _unpickle(stream, path, "legacy header")
        big_endian = isinstance(sys_info, Mapping) and sys_info.get("little_endian") is False
        referenced = {}
        state = _find_state_dict(_unpickle(stream, path, "pickle", referenced), path)
        keys = _unpickle(stream, path, "storage key list")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"{path}: corrupt legacy checkpoint: bad storage key list.")
        if len(set(keys)) != len(keys):
            raise ValueError(f"{path}: corrupt legacy checkpoint: the storage key list names a "
                             "storage twice.")
        size = os.fstat(stream.fileno()).st_size

        def read_storages(wanted):
            for key in keys:  # storages follow in key-list order, each as int64 numel + bytes
                if key not in referenced:
                    raise ValueError(f"{path}: corrupt legacy checkpoint: storage {brief(key)} "
                                     "is listed but never referenced.")
                array = _read_legacy_storage(stream, size, referenced[key], big_endian, path)
                if key in wanted:
                    yield key, array

        return _tensors(state, read_storages, path)


def _read_legacy_storage(stream, size, storage, big_endian, path):
    """One storage: int64 numel, then its bytes, which must all be in the file (1x 'inflation')."""
    header = stream.read(8)
    if len(header) < 8:
        raise ValueError(f"{path}: truncated legacy checkpoint at storage {brief(storage.key)}.")
    numel = int.from_bytes(header, "big" if big_endian else "little", signed=True)
    if numel != storage.numel:
        raise ValueError(f"{path}: legacy storage {brief(storage.key)} holds {numel} elements, "
                         f"the pickle declares {storage.numel}.")
    nbytes, left = _storage_nbytes(storage), size - stream.tell()
    if nbytes > left:
        raise ValueError(f"{path}: truncated legacy checkpoint: storage {brief(storage.key)} "
                         f"needs {nbytes} bytes, the file has {left} left.")
    return _storage_array(stream.read(nbytes), storage, big_endian, path)


def load_pth(path) -> dict[str, np.ndarray]:
    """Read a PyTorch checkpoint's tensors as ``{name: np.ndarray}`` without importing torch.

    Reads the zip format written by ``torch.save`` since PyTorch 1.6 and the older stream format
    (``_use_new_zipfile_serialization=False``). The checkpoint must be a state dict (a dict or
    OrderedDict of tensors) or a dict holding one under ``"state_dict"`` or ``"model"``.
    Tensors keep their dtype, except bfloat16, which is widened exactly to float32.

    Args:
        path: the ``.pth`` file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the pickle names anything besides tensors and plain containers
            (raised before any of it runs), or the file exceeds a resource limit of
            `_pth_limits` (raised before the memory is taken).
        ValueError: not a PyTorch checkpoint, truncated or corrupt, or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such checkpoint file: '{path}'")
    with open(path, "rb") as stream:
        head = stream.read(512)
    if not head:
        raise ValueError(f"{path}: not a PyTorch checkpoint: the file is empty.")
    if head.startswith(b"PK"):
        return _load_zip(path)
    if head[:1] == b"\x80":  # a pickle (protocol >= 2) starts the legacy stream format
        return _load_legacy(path)
    if len(head) >= 262 and head[257:262] == b"ustar" and tarfile.is_tarfile(path):
        raise ValueError(f"{path}: the tar checkpoint format of PyTorch < 0.4 is not supported. "
                         + _RESAVE_HINT)
    raise ValueError(f"{path}: not a PyTorch checkpoint (neither the zip format of "
                     "torch.save nor its legacy stream format).")
