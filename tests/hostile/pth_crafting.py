"""Hand-built `.pth` files: pickle opcodes, zip records and deflate streams, written without torch.

Hostile checkpoints lie about sizes, which neither `torch.save` nor `zipfile` would write, so
the bytes are assembled here: a few pickle opcode helpers (protocol 2, as torch.save writes),
a zip writer whose headers say whatever a test wants, and a deflate "bomb" built from one
repeated block (gigabytes of zeros in a megabyte, generated in milliseconds).
"""

from __future__ import annotations

import functools
import pickle
import struct
import zlib
from typing import NamedTuple

MiB = 1 << 20

# ------------------------------------------------------------------------------ pickle opcodes


def p_int(value):
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if -(1 << 31) <= value < (1 << 31):
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return (b"\x8a" + bytes([len(data)]) if len(data) < 256
            else b"\x8b" + struct.pack("<i", len(data))) + data


def p_str(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def p_global(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def p_stack_global(module, name):
    """STACK_GLOBAL (protocol 4): the names are strings on the stack, dots allowed."""
    return p_str(module) + p_str(name) + b"\x93"


def p_tuple(*items):
    return b"(" + b"".join(items) + b"t"


def p_tensor(key, numel, offset, shape, stride, *, storage="FloatStorage", legacy=False):
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, {})``."""
    pid = [p_str("storage"), p_global("torch", storage), p_str(key), p_str("cpu"),
           p_int(numel)] + ([b"N"] if legacy else [])
    return (p_global("torch._utils", "_rebuild_tensor_v2")
            + p_tuple(p_tuple(*pid) + b"Q", p_int(offset), p_tuple(*map(p_int, shape)),
                      p_tuple(*map(p_int, stride)), b"\x89", b"}")
            + b"R")


def p_dict(entries):
    """A dict pickle body from ``{key: opcode bytes}`` (keys pickled as str)."""
    return b"}(" + b"".join(p_str(k) + v for k, v in entries.items()) + b"u"


def state_pickle(entries, proto=b"\x80\x02"):
    return proto + p_dict(entries) + b"."


def flat_tensor(key, numel, **kw):
    return p_tensor(key, numel, 0, (numel,), (1,), **kw)


# ---------------------------------------------------------------------------------- zip files


class Record(NamedTuple):
    name: str
    data: bytes       # as written to the file (deflated records: a raw deflate stream)
    method: int       # 0 stored, 8 deflated, anything else to test refusal
    file_size: int    # the uncompressed size the headers declare
    crc: int
    flags: int = 0


def stored(name, data):
    return Record(name, data, 0, len(data), zlib.crc32(data))


def deflated(name, data):
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return Record(name, c.compress(data) + c.flush(), 8, len(data), zlib.crc32(data))


@functools.lru_cache(maxsize=None)
def _zero_block():
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)  # independent of what precedes
    return block, c.flush(zlib.Z_FINISH)


@functools.lru_cache(maxsize=None)
def _zeros_crc(mebibytes):
    crc, chunk = 0, bytes(MiB)
    for _ in range(mebibytes):
        crc = zlib.crc32(chunk, crc)
    return crc


def zero_bomb(name, mebibytes):
    """A deflated record of ``mebibytes`` MiB of zeros (~1 KB per MiB), honest headers."""
    block, end = _zero_block()
    return Record(name, block * mebibytes + end, 8, mebibytes * MiB, _zeros_crc(mebibytes))


def write_zip(path, records, *, aliases=()):
    """Write ``records``; ``aliases``: extra ``(name, index)`` directory entries that point at
    the data of ``records[index]`` (overlapping entries)."""
    body, central, offsets = bytearray(), bytearray(), []
    for r in records:
        offsets.append(len(body))
        name = r.name.encode()
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, r.flags, r.method, 0, 0x21, r.crc,
                            len(r.data), r.file_size, len(name), 0) + name + r.data
    entries = [(r, offsets[i]) for i, r in enumerate(records)]
    entries += [(records[i]._replace(name=name), offsets[i]) for name, i in aliases]
    for r, offset in entries:
        name = r.name.encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, r.flags, r.method, 0,
                               0x21, r.crc, len(r.data), r.file_size, len(name), 0, 0, 0, 0, 0,
                               offset) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central),
                      len(body), 0)
    path.write_bytes(bytes(body + central + end))
    return path


def checkpoint_zip(path, data_pkl, storages=None, *, extra=()):
    """A zip checkpoint like torch.save's: ``archive/data.pkl``, ``byteorder``, ``version``,
    ``data/<key>``; a `Record` replaces a default one."""
    records = [data_pkl if isinstance(data_pkl, Record) else stored("archive/data.pkl", data_pkl),
               stored("archive/byteorder", b"little"), stored("archive/version", b"3\n")]
    records += [v if isinstance(v, Record) else stored(f"archive/data/{k}", v)
                for k, v in (storages or {}).items()]
    return write_zip(path, records + list(extra))


# ------------------------------------------------------------------------------- legacy files

LEGACY_MAGIC, LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001
SYS_INFO = {"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}


def legacy_file(path, main_pickle, keys, storages, *, header=None):
    """The pre-1.6 stream: magic, protocol, sys_info, ``main_pickle``, keys, then each storage
    as ``(numel int64, bytes)`` from ``storages`` (a list of ``(numel, data)``)."""
    head = header if header is not None else b"".join(
        pickle.dumps(obj, protocol=2) for obj in (LEGACY_MAGIC, LEGACY_PROTOCOL, SYS_INFO))
    tail = b"".join(struct.pack("<q", numel) + data for numel, data in storages)
    path.write_bytes(head + main_pickle + pickle.dumps(keys, protocol=2) + tail)
    return path
