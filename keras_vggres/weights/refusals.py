"""Refusal rules for untrusted weight content: links, storage, dtypes and values.

A weight file is untrusted input. Every rule here raises `UnsafeWeightsError` (a ValueError)
naming the file, the layer or dataset, and the problem, before anything is assigned:

- links: only hard links and soft links that stay inside the file are followed; an external
  link (or a soft link leading through one) is refused before HDF5 could open another file;
- storage: virtual datasets, external raw storage, data never written (unallocated contiguous
  storage, missing chunks: HDF5 would return fill values, silently zeros) and chunks larger
  than their dataset (a decompression bomb) are refused; metadata only, no data is read;
- dtypes: a float weight needs float data (not bool, integers, strings or compound);
- values: NaN, infinities and values that overflow the weight's dtype (float64 1e300 into
  float32) are refused unless the caller passes ``allow_nonfinite=True``. Values are read
  block by block (about `CHECK_BLOCK_BYTES` at a time), so checking costs bounded memory.
"""

from __future__ import annotations

import math

import h5py
import numpy as np

MAX_SOFT_LINK_HOPS = 16
CHECK_BLOCK_BYTES = 4 << 20  # values are checked this many bytes (or one chunk row) at a time


class UnsafeWeightsError(ValueError):
    """A weight file or plan was refused: it names the file, the layer or dataset and why."""


# ---------------------------------------------------------------- links


def resolve(group: h5py.Group, name: str, where: str, _hops: int = 0):
    """The object at ``name`` under ``group`` (None if absent), never leaving the file.

    Walks one path component at a time and looks at each link before following it, so an
    external link is refused before HDF5 opens the file it names; a soft link is followed by
    this same walk (a soft link to an external link is refused too).
    """
    if _hops > MAX_SOFT_LINK_HOPS:
        raise UnsafeWeightsError(f"{where}: more than {MAX_SOFT_LINK_HOPS} soft links in a row "
                                 "(a loop?).")
    current = group.file["/"] if name.startswith("/") else group
    for part in [p for p in name.split("/") if p not in ("", ".")]:
        if not isinstance(current, h5py.Group):
            return None
        link = current.get(part, getlink=True)
        if link is None:
            return None
        if isinstance(link, h5py.SoftLink):
            current = resolve(current, link.path, where, _hops + 1)
        elif isinstance(link, h5py.HardLink):
            current = current[part]
        elif isinstance(link, h5py.ExternalLink):
            raise UnsafeWeightsError(
                f"{where}: {part!r} is an external link to {link.filename!r}:{link.path!r}; "
                "weights must be stored in the file itself.")
        else:
            raise UnsafeWeightsError(f"{where}: {part!r} is a {type(link).__name__}; only hard "
                                     "and in-file soft links are followed.")
    return current


def check_links(f: h5py.File, label: str) -> None:
    """Refuse any link in the whole file that leaves it (for files read without a name list)."""
    others = []  # h5py cannot raise from inside a visit: collect first, resolve after
    f.visititems_links(lambda name, link: None if isinstance(link, h5py.HardLink)
                       else others.append(name))
    for name in others:
        resolve(f, name, f"{label}, link {name!r}")


# ---------------------------------------------------------------- storage (metadata only)


def check_storage(dset: h5py.Dataset, where: str) -> None:
    """Refuse data that is not fully written in this file; reads metadata only."""
    if dset.is_virtual:
        sources = sorted({s.file_name for s in dset.virtual_sources()})
        raise UnsafeWeightsError(f"{where}: a virtual dataset (its data would come from "
                                 f"{sources}); weights must be stored in the file itself.")
    if dset.external:
        files = sorted({entry[0] for entry in dset.external})
        raise UnsafeWeightsError(f"{where}: its data is stored in external raw files {files}; "
                                 "weights must be stored in the file itself.")
    if dset.shape is None:
        raise UnsafeWeightsError(f"{where}: an empty dataspace (no shape, no data).")
    if not dset.size:
        return
    layout = dset.id.get_create_plist().get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        _check_contiguous(dset, where)
    elif layout == h5py.h5d.CHUNKED:
        _check_chunks(dset, where)


def _check_contiguous(dset: h5py.Dataset, where: str) -> None:
    offset, stored = dset.id.get_offset(), dset.id.get_storage_size()
    if offset is None:
        raise UnsafeWeightsError(f"{where}: its data was never written (no storage allocated; "
                                 "it would read as fill values).")
    needed = dset.size * dset.dtype.itemsize
    if stored < needed or offset + stored > dset.file.id.get_filesize():
        raise UnsafeWeightsError(f"{where}: its data ({needed} bytes) is missing or lies past "
                                 "the end of the file (truncated?).")


def _check_chunks(dset: h5py.Dataset, where: str) -> None:
    """Every chunk of the extent is written, inside the file, and no chunk outgrows the data."""
    shape, chunks = dset.shape, dset.chunks
    if any(c > s for c, s in zip(chunks, shape)):
        raise UnsafeWeightsError(f"{where}: chunk shape {chunks} is larger than the dataset "
                                 f"{shape}.")
    expected = math.prod(-(-s // c) for s, c in zip(shape, chunks))
    eof, seen, outside = dset.file.id.get_filesize(), set(), []

    def visit(info):
        if all(o < s and o % c == 0 for o, s, c in zip(info.chunk_offset, shape, chunks)):
            seen.add(info.chunk_offset)
        if info.byte_offset + info.size > eof:
            outside.append(info.chunk_offset)

    dset.id.chunk_iter(visit)
    if outside:
        raise UnsafeWeightsError(f"{where}: chunk at {outside[0]} lies past the end of the file "
                                 "(truncated?).")
    if len(seen) < expected:
        raise UnsafeWeightsError(f"{where}: only {len(seen)} of its {expected} chunks are "
                                 "written; the rest would read as fill values.")


# ---------------------------------------------------------------- dtypes


def check_numeric(dtype, where: str) -> None:
    """The format-level rule: weight data is numbers (no strings, no compound records)."""
    if np.dtype(dtype).kind not in "biuf":
        raise UnsafeWeightsError(f"{where}: dtype {dtype} is not numeric.")


def check_dtype(dtype, expected, where: str) -> None:
    """A float weight (``expected``) needs float data: bool and integers are refused too."""
    dtype, expected = np.dtype(dtype), np.dtype(expected)
    if expected.kind == "f" and dtype.kind != "f":
        kind = "not numeric" if dtype.kind not in "biuc" else "not a floating-point type"
        raise UnsafeWeightsError(f"{where}: dtype {dtype} is {kind}; a {expected} weight is "
                                 "expected.")


# ---------------------------------------------------------------- values (bounded reads)


def check_values(value, target, where: str, *, allow_nonfinite: bool = False,
                 stored_as=None) -> None:
    """Refuse NaN, infinities, and values that overflow ``target``; reads block by block.

    ``value`` is an array or an h5py dataset (read with ``read_direct`` in its own dtype, so
    no HDF5 conversion clamps an overflow before it is seen). ``stored_as`` reinterprets the
    stored bytes (Keras keeps bfloat16 as opaque 2-byte data).
    """
    target = np.dtype(target)
    floats = stored_as is not None or np.dtype(value.dtype).kind == "f"
    if allow_nonfinite or target.kind != "f" or not floats:
        return
    for start, block in row_blocks(value, CHECK_BLOCK_BYTES):
        if stored_as is not None:
            block = block.view(stored_as)
        with np.errstate(over="ignore", invalid="ignore"):
            converted = block.astype(target, copy=False)
        bad = ~np.isfinite(converted)
        if bad.any():
            raise UnsafeWeightsError(_nonfinite_message(where, block, converted, bad, start,
                                                        target))


def _nonfinite_message(where, block, converted, bad, start, target) -> str:
    local = np.unravel_index(int(np.argmax(bad)), block.shape)
    original, after = block[local].item(), converted[local].item()
    index = tuple(int(i) + (start if axis == 0 else 0) for axis, i in enumerate(local))
    why = "is not finite" if not np.isfinite(original) else f"overflows {target} (becomes {after})"
    return (f"{where}: {int(bad.sum())} or more values are not finite in {target}; the first, "
            f"{original!r} at index {index}, {why}. Pass allow_nonfinite=True to load such "
            "values anyway.")


def row_blocks(value, max_bytes: int):
    """Yield ``(first row, array)`` blocks of ``value``: about ``max_bytes``, whole chunk rows."""
    shape = tuple(value.shape)
    if not shape or not shape[0]:
        yield 0, read_rows(value, None, None, value.dtype)
        return
    row_bytes = max(1, math.prod(shape[1:]) * np.dtype(value.dtype).itemsize)
    rows = max(1, max_bytes // row_bytes)
    chunks = getattr(value, "chunks", None)
    if chunks:
        rows = -(-rows // chunks[0]) * chunks[0]  # whole chunks: each is decompressed once
    for start in range(0, shape[0], rows):
        yield start, read_rows(value, start, min(start + rows, shape[0]), value.dtype)


def read_rows(value, start, stop, dtype) -> np.ndarray:
    """``value[start:stop]`` (everything when ``start`` is None) as an array of ``dtype``.

    h5py data is read straight into a new array with ``read_direct``.
    """
    if isinstance(value, h5py.Dataset):
        if not value.size:
            return np.empty(value.shape if start is None else (0,) + value.shape[1:], dtype)
        if start is None:
            out = np.empty(value.shape, dtype)
            value.read_direct(out)
        else:
            out = np.empty((stop - start,) + tuple(value.shape[1:]), dtype)
            value.read_direct(out, source_sel=np.s_[start:stop])
        return out
    value = np.asarray(value)
    return np.asarray(value if start is None else value[start:stop], dtype=dtype)
