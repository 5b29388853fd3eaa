"""Read PyTorch ``.pth`` checkpoints into NumPy arrays, without torch and without running pickles.

``torch.save`` writes a pickle whose tensors point at raw storages kept beside it (zip format,
the default since PyTorch 1.6) or after it (the legacy stream format). A plain ``pickle.load``
would import and call whatever the file names, so the pickle is read by a restricted unpickler
(`_pth_pickle`): it resolves only the handful of names a tensor state dict uses, each to a local
stand-in that merely records what the tensor looks like. Any other name (``os.system``,
``builtins.exec``, a model class, ...) raises ``UnsafeCheckpointError`` before it is called.
Tensor data are read afterwards, one storage at a time, and copied into contiguous arrays.

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
import struct
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from keras_vggres.weights._pth_limits import (
    RecordReader, UnsafeCheckpointError, brief, brief_list, check_materialised, check_view, clip,
)
from keras_vggres.weights._pth_pickle import DTYPES, TensorSpec, unpickle

__all__ = ["UnsafeCheckpointError", "load_pth"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_WRAPPER_KEYS = ("state_dict", "model")
_BYTEORDER_MAX_BYTES = 16  # "little" or "big", maybe with a newline
_RESAVE_HINT = "Re-save it with a current PyTorch: `torch.save(torch.load(path), new_path)`."


# ---------------------------------------------------------------------------------------------
# Finding the state dict and materialising tensors.


def _find_state_dict(obj, path):
    """The ``{name: tensor}`` mapping: the object itself or its ``state_dict``/``model`` entry."""
    if isinstance(obj, Mapping) and any(isinstance(v, TensorSpec) for v in obj.values()):
        candidate, where = obj, "the checkpoint"
    else:
        found = [k for k in _WRAPPER_KEYS
                 if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)]
        if not found:
            keys = (f"keys [{', '.join(sorted(map(brief, itertools.islice(obj, 100)))[:10])}]"
                    if isinstance(obj, Mapping) else type(obj).__name__)
            raise ValueError(
                f"{path}: no tensor state dict found; expected a mapping of tensors or a dict "
                f"with one under {list(_WRAPPER_KEYS)}, got {keys}."
            )
        candidate, where = obj[found[0]], f"checkpoint[{found[0]!r}]"
    for name, value in candidate.items():
        if not isinstance(name, str) or not isinstance(value, TensorSpec):
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
    dtype = np.dtype(DTYPES[storage.dtype.name])
    return dtype.newbyteorder(">") if big_endian and dtype.itemsize > 1 else dtype


def _storage_nbytes(storage):
    return storage.numel * np.dtype(DTYPES[storage.dtype.name]).itemsize


def _tensor_nbytes(spec):
    """Bytes of the materialised copy (bfloat16 becomes float32), as a Python int."""
    dtype_name = spec.storage.dtype.name
    itemsize = 4 if dtype_name == "bfloat16" else np.dtype(DTYPES[dtype_name]).itemsize
    return math.prod(spec.shape) * itemsize


def _check_holds(nbytes, storage, path):
    if nbytes < _storage_nbytes(storage):
        raise ValueError(
            f"{path}: storage {brief(storage.key)} is truncated: it holds {nbytes} bytes but "
            f"{storage.numel} {storage.dtype.name} elements need {_storage_nbytes(storage)}."
        )


def _storage_array(buffer, storage, big_endian, path):
    _check_holds(len(buffer), storage, path)
    return np.frombuffer(buffer, dtype=_storage_dtype(storage, big_endian), count=storage.numel)


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


def _tensors(state, storages_for, path):
    """Materialise every tensor, one storage at a time, each storage read once.

    ``storages_for(wanted)`` checks that the file holds the bytes of every storage in ``wanted``
    (reading none), then returns an iterator of ``(key, 1-D array)``; only one storage buffer is
    alive at a time besides the finished copies. The copies' total size is checked against those
    bytes before anything is read.
    """
    wanted = {spec.storage.key: spec.storage for spec in state.values()}
    for name, spec in state.items():
        check_view(name, spec, path)
    storages = storages_for(wanted)
    check_materialised(sum(map(_tensor_nbytes, state.values())),
                       sum(map(_storage_nbytes, wanted.values())), path)
    users = {}
    for name, spec in state.items():
        users.setdefault(spec.storage.key, []).append(name)
    arrays = {}
    try:
        for key, flat in storages:
            for name in users.pop(key):
                arrays[name] = _materialise(state[name], flat)
    except MemoryError:  # sizes passed the limits, yet this machine cannot hold the copies
        raise ValueError(f"{path}: not enough memory to load its {len(state)} tensors (the file "
                         "is within limits; the machine is short of memory).") from None
    if users:
        raise ValueError(f"{path}: storage records {brief_list(sorted(users))} are missing.")
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
            twice = sorted(n for n, count in counts.items() if count > 1)
            raise ValueError(f"{path}: corrupt zip checkpoint: records {brief_list(twice)} "
                             "appear twice.")
        pickles = sorted(n for n in names if n.count("/") == 1 and n.endswith("/data.pkl"))
        if len(pickles) != 1:
            raise ValueError(f"{path}: not a PyTorch checkpoint: expected one "
                             f"'<archive>/data.pkl' record, found "
                             f"{brief_list(pickles) if pickles else 'none'}.")
        prefix = pickles[0][: -len("data.pkl")]
        records = RecordReader(archive, path, os.path.getsize(path))
        data_pkl = io.BytesIO(records.read_pickle(pickles[0]))  # the record read is freed
        state = _find_state_dict(unpickle(data_pkl, path, "data.pkl"), path)
        del data_pkl
        big_endian = _zip_byteorder(records, f"{prefix}byteorder", names, path) == "big"

        def storages_for(wanted):
            sizes = {}  # key -> bytes to read, counted against the file's inflation budget
            for key, storage in wanted.items():
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise ValueError(f"{path}: storage record {brief(record)} is missing "
                                     "(truncated or corrupt checkpoint).")
                sizes[key] = records.reserve(record, _storage_nbytes(storage), whole=False)
                _check_holds(sizes[key], storage, path)
            return ((key, _storage_array(records.read_reserved(f"{prefix}data/{key}", size),
                                         wanted[key], big_endian, path))
                    for key, size in sizes.items())

        return _tensors(state, storages_for, path)


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
        magic = unpickle(stream, path, "legacy header")
        protocol = unpickle(stream, path, "legacy header")
        if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL:
            raise ValueError(f"{path}: not a PyTorch checkpoint (unrecognised legacy header).")
        sys_info = unpickle(stream, path, "legacy header")
        big_endian = isinstance(sys_info, Mapping) and sys_info.get("little_endian") is False
        referenced = {}
        state = _find_state_dict(unpickle(stream, path, "pickle", referenced), path)
        keys = unpickle(stream, path, "storage key list")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"{path}: corrupt legacy checkpoint: bad storage key list.")
        if len(set(keys)) != len(keys):
            raise ValueError(f"{path}: corrupt legacy checkpoint: the storage key list names a "
                             "storage twice.")
        size = os.fstat(stream.fileno()).st_size

        def read_all(wanted):  # storages follow in key-list order, as int64 numel + bytes
            for key in keys:
                array = _read_legacy_storage(stream, referenced[key], big_endian, path)
                if key in wanted:
                    yield key, array

        def storages_for(wanted):
            odd = sorted((set(keys) - referenced.keys()) | (wanted.keys() - set(keys)))
            if odd:
                raise ValueError(f"{path}: corrupt legacy checkpoint: storages "
                                 f"{brief_list(odd)} are "
                                 "not both referenced by the pickle and listed after it.")
            need, left = sum(8 + _storage_nbytes(referenced[k]) for k in keys), size - stream.tell()
            if need > left:
                raise ValueError(f"{path}: truncated legacy checkpoint: its storages need {need} "
                                 f"bytes, the file has {left} left.")
            return read_all(wanted)

        return _tensors(state, storages_for, path)


def _read_legacy_storage(stream, storage, big_endian, path):
    """One storage: int64 numel, then its bytes (`storages_for` has checked they are there)."""
    header = stream.read(8)
    if len(header) < 8:
        raise ValueError(f"{path}: truncated legacy checkpoint at storage {brief(storage.key)}.")
    numel = int.from_bytes(header, "big" if big_endian else "little", signed=True)
    if numel != storage.numel:
        raise ValueError(f"{path}: legacy storage {brief(storage.key)} holds {numel} elements, "
                         f"the pickle declares {storage.numel}.")
    return _storage_array(stream.read(_storage_nbytes(storage)), storage, big_endian, path)


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
