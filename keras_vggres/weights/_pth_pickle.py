"""The restricted unpickler of ``.pth`` pickles: tensor state-dict names only, as inert stand-ins.

A plain ``pickle.load`` would import and call whatever the file names. `_SafeUnpickler` resolves
only the handful of names a tensor state dict uses, each to a local stand-in that merely records
what the tensor looks like; any other name raises ``UnsafeCheckpointError`` before it is called.
`unpickle` runs it on a pickle that `_pth_limits.scan_pickle` has checked first.
"""

from __future__ import annotations

import collections
import io
import pickle
from collections.abc import Mapping
from typing import NamedTuple

from keras_vggres.weights._pth_limits import (
    MAX_INT64, MAX_TENSOR_DIMS, UnsafeCheckpointError, brief, clip, scan_pickle,
)

# torch storage class and dtype names -> NumPy dtype (little-endian). bfloat16 has no NumPy
# dtype: its raw 16-bit words are read as uint16 and widened to float32 by `torch_pth`.
DTYPES = {
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


# ---------------------------------------------------------------------------------------------
# Stand-ins: what the restricted unpickler hands back instead of torch objects. Immutable
# tuples without __setstate__ or __dict__, so a pickle's BUILD opcode cannot rewrite a
# validated shape or stride (a frozen slotted dataclass would: it gets a __setstate__).


class _DType(NamedTuple):
    name: str  # a key of DTYPES


class _StorageRef(NamedTuple):
    key: str
    dtype: _DType
    numel: int


class TensorSpec(NamedTuple):  # what `load_pth` materialises
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


def _new_ordered_dict():
    """What ``OrderedDict()`` unpickles to; pickle fills it with SETITEMS, whose keys the scan
    checks. (Items passed as arguments would be hashed unchecked, and pickle never does that.)"""
    return _PickledOrderedDict()


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
    return TensorSpec(storage, storage_offset, shape, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       metadata=None):
    _check_hooks(backward_hooks)
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    _check_hooks(backward_hooks)
    if not isinstance(data, TensorSpec):
        raise ValueError(f"parameter data must be a tensor, got {brief(data)}")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_REBUILD_TENSOR, _REBUILD_TENSOR_V2) or new_type != _TENSOR_TYPE:
        raise ValueError(f"unsupported tensor subclass rebuild: {brief(func)}, "
                         f"{brief(new_type)}")
    return func(*args)


_REBUILD_TENSOR, _REBUILD_TENSOR_V2 = _Callable(_rebuild_tensor), _Callable(_rebuild_tensor_v2)
_ALLOWED = {
    ("collections", "OrderedDict"): _Callable(_new_ordered_dict),
    ("torch._utils", "_rebuild_tensor"): _REBUILD_TENSOR,
    ("torch._utils", "_rebuild_tensor_v2"): _REBUILD_TENSOR_V2,
    ("torch._utils", "_rebuild_parameter"): _Callable(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Callable(_rebuild_parameter),
    ("torch._tensor", "_rebuild_from_type_v2"): _Callable(_rebuild_from_type_v2),
    ("torch", "Tensor"): _TENSOR_TYPE,
    ("torch.nn.parameter", "Parameter"): _TENSOR_TYPE,
    **{("torch", name): _DType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): _DType(name) for name in DTYPES},
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


def unpickle(stream, path, what, storages=None):
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
