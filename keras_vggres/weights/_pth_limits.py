"""Resource limits for untrusted ``.pth`` files: bounded zip reads, a pickle pre-scan, a view cap.

A checkpoint is data from the internet; reading it must cost memory in proportion to what it
honestly holds, and every way of lying about sizes must end in one ``ValueError`` naming the
file. The rules, with the constants below (numbers and reasons sit next to each constant):

* **Zip records** (``data.pkl``, ``byteorder``, storages: one rule for every record read): a
  record may inflate to at most ``MAX_INFLATION`` times its compressed size, or
  ``INFLATION_FLOOR_BYTES`` if that is more, and all records read from one file together to at
  most ``MAX_INFLATION`` times the file's size (or the floor). Both are checked against the
  headers before a record is opened; records are then read in ``READ_CHUNK_BYTES`` chunks into
  a buffer of the checked size, which zipfile never overruns. Only stored (what ``torch.save``
  writes) and deflated records that lie inside the file are read; encrypted ones are refused.
  Records never read (e.g. ``version``) cost nothing.
* **Pickles** are walked opcode by opcode (`scan_pickle`, non-recursive, nothing built) before
  the unpickler runs: at most ``MAX_PICKLE_BYTES`` bytes and ``MAX_PICKLE_OPCODES`` opcodes,
  containers nested at most ``MAX_PICKLE_DEPTH`` deep (a deeper tuple crashes CPython when it
  is hashed as a dict key), ints of at most ``MAX_PICKLE_INT_BITS`` bits, memo indices below
  ``MAX_PICKLE_OPCODES``, and no string, bytes or frame longer than what is left of the pickle.
  An object fetched from the memo may not be modified afterwards (a legitimate pickle fills a
  container before it references it again), so the depth the walk computes bounds the real one.
  Dict keys and set members must be strings, bytes or numbers (ints of at most 64 bits): keys
  such as tuples or huge ints can be crafted to share one hash, making each insert slower.
* **Legacy (non-zip) files** use the same pickle scan (bounded by the bytes left in the file),
  and their storages together may not claim more bytes than are left after the pickles: the
  inflation limit is 1x.
* **Tensors**: the bytes materialised for the state dict may not exceed ``MAX_VIEW_FACTOR``
  times the bytes of the storages it uses, plus ``MATERIALISE_FLOOR_BYTES`` (views of one
  storage are fine until then). This is checked before any storage is read, once the storages
  are known to be in the file (their zip headers within the inflation budget, or the legacy
  file long enough), so a storage that only claims a size cannot raise the cap. Shapes,
  strides and offsets are int64, with at most ``MAX_TENSOR_DIMS`` dimensions.
"""

from __future__ import annotations

import io
import math
import pickletools
import reprlib
import zipfile
import zlib

# Zip records. Float weights barely compress (random float32: ~1.07x); a record of zeros deflates
# ~1000x, so an honest re-zipped checkpoint stays far below 64x, a bomb far above it.
MAX_INFLATION = 64
INFLATION_FLOOR_BYTES = 1 << 20    # small records (byteorder, a zero bias) may compress freely
READ_CHUNK_BYTES = 1 << 20         # one inflate step; the output buffer is allocated up front
_READ_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
# Flag bits read: deflate options (1, 2), data descriptor (3; torch.save sets it) and UTF-8
# names (11). Others (encryption, patched data, ...) are refused.
_READ_FLAGS = 0x080E

# Pickles. A ResNet-152 state dict pickles to 115 KB / 31.6k opcodes / depth 6; a training
# checkpoint with its Adam state to 232 KB / 76k opcodes. The limits leave 13x (opcodes) to 280x
# (bytes) headroom while bounding what the unpickler can build: ~100 bytes per opcode, plus the
# strings it holds.
MAX_PICKLE_BYTES = 64 << 20
MAX_PICKLE_OPCODES = 1_000_000
MAX_PICKLE_DEPTH = 100             # torch.save's own recursive pickler stops near 1000
MAX_PICKLE_INT_BITS = 256          # epochs, seeds, sizes; a 128-bit seed fits

# Tensors. bfloat16 is widened to float32 (2x); a real checkpoint has no overlapping views, so
# 4x allows a widened model with tied weights, and the floor any small file.
MAX_VIEW_FACTOR = 4
MATERIALISE_FLOOR_BYTES = 16 << 20
MAX_TENSOR_DIMS = 32               # NumPy 1.x's limit; weights have at most 5
MAX_INT64 = (1 << 63) - 1          # torch sizes, strides and offsets are int64
_MAX_ITEMSIZE = 16                 # complex128

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 3


class UnsafeCheckpointError(ValueError):
    """A checkpoint names code to run (anything besides tensors and plain containers), or asks
    for more memory than its contents justify (a resource limit of `_pth_limits`)."""


def brief(value) -> str:
    """A bounded one-line repr for error messages (file contents can be huge or deep)."""
    return _REPR.repr(value)


def brief_list(values, count=5) -> str:
    """The first ``count`` values, each `brief`, as a list."""
    return f"[{', '.join(map(brief, list(values)[:count]))}]"


def clip(text, limit=300) -> str:
    """``str(text)`` on one line, at most ``limit`` characters, for messages."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


# --------------------------------------------------------------------------------- zip records


class RecordReader:
    """Reads records of one zip archive within the per-record and per-file inflation limits."""

    def __init__(self, archive, path, file_size):
        self._archive, self._path = archive, path
        self._left = max(INFLATION_FLOOR_BYTES, MAX_INFLATION * file_size)
        self._file_size = file_size

    def read(self, name, limit, *, whole):
        """Up to ``limit`` bytes of record ``name``; ``whole``: a longer record is an error."""
        return self.read_reserved(name, self.reserve(name, limit, whole=whole))

    def reserve(self, name, limit, *, whole):
        """Check record ``name``'s headers against the limits and count the bytes it will give
        (at most ``limit``; returned) against the file's budget, without reading it."""
        info = self._archive.getinfo(name)
        self._check_header(info, name, limit, whole)
        size = min(info.file_size, limit)
        allowance = max(INFLATION_FLOOR_BYTES, MAX_INFLATION * info.compress_size)
        if size > allowance:
            raise UnsafeCheckpointError(
                f"{self._path}: record {brief(name)} is compressed "
                f"{info.file_size // max(info.compress_size, 1)}x ({info.compress_size} -> "
                f"{info.file_size} bytes); weight data expands at most {MAX_INFLATION}x "
                "(torch.save stores records uncompressed). Refusing to inflate it.")
        if size > self._left:
            raise UnsafeCheckpointError(
                f"{self._path}: record {brief(name)} would bring the bytes inflated from this "
                f"{self._file_size}-byte file past {MAX_INFLATION}x its size; refusing to read it.")
        self._left -= size
        return size

    def read_pickle(self, name):
        """A pickle record, whole, of at most ``MAX_PICKLE_BYTES``."""
        return self.read(name, MAX_PICKLE_BYTES, whole=True)

    def _check_header(self, info, name, limit, whole):
        if info.compress_type not in _READ_METHODS or info.flag_bits & ~_READ_FLAGS:
            raise ValueError(
                f"{self._path}: record {brief(name)} uses zip compression method "
                f"{info.compress_type} with flags {info.flag_bits:#06x}; only stored (as "
                "torch.save writes) and deflated records, unencrypted, are read.")
        if not 0 <= info.header_offset <= self._file_size - info.compress_size:
            raise ValueError(f"{self._path}: record {brief(name)} lies outside the file (offset "
                             f"{info.header_offset}, {info.compress_size} bytes); the zip is "
                             "truncated or corrupt.")
        if whole and info.file_size > limit:
            raise UnsafeCheckpointError(f"{self._path}: record {brief(name)} is {info.file_size} "
                                        f"bytes; at most {limit} are accepted.")

    def read_reserved(self, name, size):
        """The first ``size`` bytes of record ``name``, `reserve`d before."""
        buffer = bytearray(size)
        got = 0
        try:
            with self._archive.open(name) as stream, memoryview(buffer) as view:
                while got < size:
                    n = stream.readinto(view[got:got + READ_CHUNK_BYTES])
                    if not n:
                        break
                    got += n
        # zipfile's errors for a damaged record: bad local header or CRC, a name in the local
        # header that is not UTF-8, a deflate stream that is corrupt or ends early.
        except (zipfile.BadZipFile, UnicodeDecodeError, zlib.error, EOFError) as exc:
            raise ValueError(f"{self._path}: truncated or corrupt zip record {brief(name)}: "
                             f"{clip(exc)}") from exc
        del buffer[got:]
        return buffer


# -------------------------------------------------------------------------------- pickle scan


class _Short(Exception):
    """A read past the bytes a pickle may use (the end of the file, or MAX_PICKLE_BYTES)."""


class _BoundedReader:
    """The file-like view `pickletools.genops` reads: refuses any read past ``limit`` bytes."""

    def __init__(self, stream, limit):
        self._stream, self.left, self._start = stream, limit, stream.tell()

    def tell(self):
        return self._stream.tell() - self._start

    def read(self, n):
        if n > self.left:
            raise _Short(f"an opcode at byte {self.tell()} needs {n} bytes; {self.left} are left")
        data = self._stream.read(n)
        self.left -= len(data)
        return data

    def readline(self):
        data = self._stream.readline(self.left)
        self.left -= len(data)
        return data


_MUTATORS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})
# Opcodes that hash the items they pop, as dict keys or set members: items[start::step].
_HASHES = {"SETITEM": (1, 2), "SETITEMS": (1, 2), "DICT": (0, 2), "ADDITEMS": (1, 1),
           "FROZENSET": (0, 1)}
# Scalars whose hash an attacker cannot make collide: str and bytes (randomised SipHash),
# floats, None, bools, and ints of at most 64 bits (hash = value mod 2**61 - 1).
_SCALARS = frozenset({"NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "FLOAT",
                      "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE",
                      "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "BINBYTES",
                      "SHORT_BINBYTES", "BINBYTES8"})
_HASH_SAFE_INT_BITS = 64
_KINDS = {"PUT": "put", "BINPUT": "put", "LONG_BINPUT": "put", "MEMOIZE": "put",
          "GET": "get", "BINGET": "get", "LONG_BINGET": "get", "MARK": "mark", "DUP": "dup",
          "POP": "pop", "EMPTY_LIST": "container", "EMPTY_DICT": "container",
          "EMPTY_SET": "container", "INT": "int", "LONG": "int", "LONG1": "int", "LONG4": "int"}


def _plan(op):
    """How an opcode moves the stack: (kind, items it pops below a mark, pops up to a mark)."""
    before = op.stack_before
    marked = pickletools.markobject in before
    fixed = before.index(pickletools.markobject) if marked else len(before)
    kind = _KINDS.get(op.name) or ("scalar" if op.name in _SCALARS else
                                   "modify" if op.name in _MUTATORS else
                                   "leaf" if not before and op.stack_after else "build")
    return kind, fixed, marked


_PLANS = {op: _plan(op) for op in pickletools.opcodes}
_LEAF = ([0],)    # shared by every other leaf (globals, big ints, ...): nothing may modify it
_SCALAR = ([0],)  # shared by every hash-safe scalar (`_SCALARS`): may be a key


def _depth(entry):
    return entry[0] if type(entry) is list else entry[0][0]


class _StackModel:
    """The unpickler's stack, holding only each object's nesting depth.

    An entry is a cell ``[depth]`` that the pickle may still modify (a container it built and
    holds), or ``(cell,)``: a second handle (from the memo or DUP) or a scalar, not modifiable.
    ``marks`` holds the stack heights of the open MARKs, as the C unpickler does.
    """

    def __init__(self, refuse):
        self.stack, self.marks, self.memo, self.refuse = [], [], {}, refuse

    def step(self, op, arg, pos):
        kind, fixed, marked = _PLANS[op]
        stack = self.stack
        if kind == "scalar":
            stack.append(_SCALAR)
        elif kind == "leaf":
            stack.append(_LEAF)
        elif kind == "container":
            stack.append([0])
        elif kind == "int":
            if arg.bit_length() > MAX_PICKLE_INT_BITS:
                self.refuse(f"an int at byte {pos} has {arg.bit_length()} bits, more than "
                            f"{MAX_PICKLE_INT_BITS}")
            stack.append(_SCALAR if arg.bit_length() <= _HASH_SAFE_INT_BITS else _LEAF)
        elif kind == "mark":
            self.marks.append(len(stack))
        elif kind == "put":
            index = len(self.memo) if op.name == "MEMOIZE" else arg
            if index >= MAX_PICKLE_OPCODES:
                self.refuse(f"memo index {index} at byte {pos} exceeds {MAX_PICKLE_OPCODES}")
            top = self._pop(1, False, pos)[0]
            stack.append(top)
            self.memo[index] = top if type(top) is tuple else (top,)
        elif kind == "get":
            if arg not in self.memo:
                raise ValueError(f"memo index {arg} at byte {pos} is read before it is written")
            stack.append(self.memo[arg])
        elif kind == "dup":  # two handles on one object: neither may modify it
            top = self._pop(1, False, pos)[0]
            stack += [top if type(top) is tuple else (top,)] * 2
        elif kind == "pop":
            if len(stack) > (self.marks[-1] if self.marks else 0):
                stack.pop()
            else:
                self._pop(0, True, pos)
        else:
            self._build(op, kind, self._pop(fixed, marked, pos), pos)

    def _pop(self, fixed, marked, pos):
        """The ``fixed`` items below the topmost mark's slice, then that slice (if ``marked``)."""
        stack, sliced = self.stack, []
        if marked:
            if not self.marks:
                raise ValueError(f"the opcode at byte {pos} needs a MARK that is not there")
            mark = self.marks.pop()
            sliced = stack[mark:]
            del stack[mark:]
        start = len(stack) - fixed
        if start < (self.marks[-1] if self.marks else 0):
            raise ValueError(f"the opcode at byte {pos} needs a stack item that is not there")
        items = stack[start:]
        del stack[start:]
        return items + sliced

    def _build(self, op, kind, items, pos):
        start, step = _HASHES.get(op.name, (len(items), 1))
        if any(item is not _SCALAR for item in items[start::step]):
            self.refuse(f"{op.name} at byte {pos} hashes a dict key or set member that is not a "
                        "string, bytes or a number (ints of at most 64 bits): such keys can be "
                        "crafted to collide")
        if kind == "modify":  # items[0], below the others, is the container modified
            target = items[0]
            if type(target) is not list:
                raise ValueError(f"{op.name} at byte {pos} modifies an object that is not a "
                                 "container the pickle holds (a scalar, or a memo reference)")
            target[0] = max(target[0], 1 + max(map(_depth, items[1:]), default=-1))
            self._check_depth(target[0], pos)
            self.stack.append(target)
        elif op.stack_after:
            depth = 1 + max(map(_depth, items), default=-1)
            self._check_depth(depth, pos)
            self.stack.append([depth])

    def _check_depth(self, depth, pos):
        if depth > MAX_PICKLE_DEPTH:
            self.refuse(f"containers nest more than {MAX_PICKLE_DEPTH} deep at byte {pos} (a "
                        "state dict nests about 6 deep)")


def scan_pickle(stream, path, what) -> bytes:
    """Check the pickle that starts at ``stream``'s position against the limits; return it.

    Nothing is built or called: `pickletools.genops` decodes one opcode at a time and
    `_StackModel` follows the stack shape. ``stream`` must be seekable; it is left just after
    the pickle's STOP opcode.
    """
    start = stream.tell()
    available = stream.seek(0, io.SEEK_END) - start
    stream.seek(start)

    def refuse(problem):
        raise UnsafeCheckpointError(f"{path}: {what}: {problem}; refusing to unpickle it.")

    capped = available > MAX_PICKLE_BYTES
    reader = _BoundedReader(stream, MAX_PICKLE_BYTES if capped else available)
    model = _StackModel(refuse)
    try:
        for count, (op, arg, pos) in enumerate(pickletools.genops(reader), start=1):
            if count > MAX_PICKLE_OPCODES:
                refuse(f"it has more than {MAX_PICKLE_OPCODES} opcodes")
            if op.name == "FRAME" and arg > reader.left:
                refuse(f"a frame at byte {pos} claims {arg} bytes; only {reader.left} are left")
            model.step(op, arg, pos)
    except _Short as exc:
        if capped:
            refuse(f"{exc} within the size limit")
        raise ValueError(f"{path}: {what} is truncated or corrupt: {exc}.") from None
    except UnsafeCheckpointError:
        raise
    except ValueError as exc:  # from genops (unknown opcode, bad argument) or the stack model
        if capped and reader.left == 0:  # a text opcode ran into the size limit
            refuse(f"it is longer than {MAX_PICKLE_BYTES} bytes")
        raise ValueError(f"{path}: {what} is corrupt or not a tensor checkpoint: "
                         f"{clip(exc)}") from exc
    length = reader.tell()
    stream.seek(start)
    return stream.read(length)


def check_materialised(total, declared, path):
    """Refuse tensors whose copies would outgrow the storages they view (see module doc)."""
    limit = MAX_VIEW_FACTOR * declared + MATERIALISE_FLOOR_BYTES
    if total > limit:
        raise UnsafeCheckpointError(
            f"{path}: its tensors would take {total} bytes from {declared} bytes of storage; "
            f"at most {MAX_VIEW_FACTOR}x plus {MATERIALISE_FLOOR_BYTES} bytes are accepted "
            "(overlapping views of one storage are not weights).")


def check_view(name, spec, path):
    """A tensor must lie inside its storage and be no larger than it, before it is copied."""
    if 0 in spec.shape:  # nothing to read; NumPy still needs the other dimensions' product
        if math.prod(n for n in spec.shape if n) > MAX_INT64 // _MAX_ITEMSIZE:
            raise ValueError(f"{path}: empty tensor {brief(name)} has shape {spec.shape}, too "
                             "large for NumPy even with no elements.")
        return
    numel, key = spec.storage.numel, brief(spec.storage.key)
    last = spec.offset + sum((n - 1) * s for n, s in zip(spec.shape, spec.stride))
    if last >= numel:
        raise ValueError(
            f"{path}: tensor {brief(name)} (shape {spec.shape}, stride {spec.stride}, offset "
            f"{spec.offset}) reaches element {last} of storage {key}, which has only {numel}.")
    elements = math.prod(spec.shape)
    if elements > numel:  # inside the storage yet larger: overlapping (expanded) strides
        raise ValueError(
            f"{path}: tensor {brief(name)} (shape {spec.shape}, stride {spec.stride}) has "
            f"{elements} elements but its storage {key} only {numel}: an expanded view is not "
            "a weight, and materialising it could exhaust memory.")
