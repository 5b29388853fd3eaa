"""Read and write Keras legacy HDF5 weight files by layer name, all or nothing.

The legacy layout (Keras 2 / tf-keras ``save_weights("x.h5")``, and every official
keras.applications file) is: root attr ``layer_names`` (all layers, in model order), one group
per layer with attr ``weight_names``, and one dataset per weight found by following that name
(``conv1_conv/kernel:0`` nested, or Keras-1 flat ``block1_conv1_W_1:0``). Only the attrs give
the right order: h5py iterates groups and datasets alphabetically.

Loading is in two passes so that a bad file never half-loads a model: pass 1 compares every
shape (metadata only, no data read); pass 2 reads one dataset at a time and assigns it, so peak
extra memory is about one weight tensor.
"""

from __future__ import annotations

import os
import uuid
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import h5py
import keras
import numpy as np

NATIVE_SUFFIXES = (".keras", ".weights.h5", ".weights.json")
TOP_LEVEL_GROUP = "top_level_model_weights"
ATTR_CHUNK_LIMIT = 64512  # bytes; HDF5 object-header limit, larger attrs are split name0, name1...
PROBLEM_KINDS = ("shape", "count", "dtype", "missing", "unexpected")  # most telling first
PER_KIND_SHOWN = 3
WHOLE_READ_BYTES = 16 << 20  # larger weights are read from the file in slices
ASSIGN_SLICE_BYTES = 4 << 20  # larger weights are assigned in place, slice by slice

WeightPlan = Mapping[str, Sequence]  # layer name -> arrays (or h5py datasets) in file order


# ---------------------------------------------------------------- reading


def read_weight_file(path) -> dict[str, list[np.ndarray]]:
    """Read every weight of a legacy HDF5 file: ``{layer name: arrays in weight_names order}``.

    Layers come in the file's ``layer_names`` order; weightless layers are left out.
    """
    path = _existing_path(path)
    with _open_h5(path) as f:
        datasets = _layer_datasets(f, path)
        return {name: [np.asarray(d) for d in dsets] for name, dsets in datasets.items()}


def read_weight_shapes(path) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """List ``{layer name: [(weight name, shape), ...]}`` without reading any weight data."""
    path = _existing_path(path)
    with _open_h5(path) as f:
        root = _weights_root(f, path)
        return {
            name: list(zip(_attr_list(root[name], "weight_names"), [tuple(d.shape) for d in dsets]))
            for name, dsets in _layer_datasets(f, path).items()
        }


def legacy_weight_name(layer_name: str, weight: str) -> str:
    """The name tf-keras gives a weight in a legacy file, e.g. ``conv1_conv/kernel:0``."""
    return f"{layer_name}/{weight}:0"


def _existing_path(path) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weight file not found: {path!r}")
    return path


@contextmanager
def _open_h5(path):
    """Open read-only; anything that is not a complete HDF5 file becomes a ValueError."""
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        if zipfile.is_zipfile(path):
            raise ValueError(
                f"{path!r} is a Keras 3 `.keras` archive, not a legacy HDF5 weight file; "
                "give it a `.keras` name and load it with `load_weights` or `model.load_weights`."
            ) from err
        raise ValueError(
            f"{path!r} is not a readable HDF5 weight file (truncated, corrupt or another format; "
            f"delete it and fetch it again): {err}"
        ) from err
    with f:
        yield f


def _weights_root(f: h5py.File, path: str) -> h5py.Group:
    """The group holding ``layer_names``: the root, or ``model_weights`` of a full-model file."""
    if _has_attr_list(f, "layer_names"):
        return f
    if "model_weights" in f and _has_attr_list(f["model_weights"], "layer_names"):
        return f["model_weights"]
    if "layers" in f or "vars" in f:
        raise ValueError(
            f"{path!r} is a Keras 3 native weights file (written by `model.save_weights("
            "'*.weights.h5')`), not a legacy HDF5 weight file; give it a `.weights.h5` name and "
            "load it with `load_weights` or `model.load_weights`."
        )
    raise ValueError(
        f"{path!r} is HDF5 but not a Keras legacy weight file: it has no `layer_names` attribute "
        "at its root or in a `model_weights` group."
    )


def _has_attr_list(group: h5py.Group, name: str) -> bool:
    return name in group.attrs or f"{name}0" in group.attrs


def _attr_list(group: h5py.Group, name: str) -> list[str]:
    """A list-of-strings attr, joined from ``name0, name1, ...`` when split, decoded from bytes."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks, i = [], 0
        while f"{name}{i}" in group.attrs:
            chunks.append(group.attrs[f"{name}{i}"])
            i += 1
    values = [v for chunk in chunks for v in np.atleast_1d(chunk)]
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _layer_datasets(f: h5py.File, path: str) -> dict[str, list]:
    """Pass 1 on the file side: each weighted layer's datasets, following ``weight_names``.

    Data is not read, except for chunked (e.g. compressed) datasets, which are read now so that
    a corrupt chunk fails before anything is assigned.
    """
    root = _weights_root(f, path)
    names = _attr_list(root, "layer_names")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path!r} lists layers more than once in `layer_names`: {duplicates}.")
    if TOP_LEVEL_GROUP in root and TOP_LEVEL_GROUP not in names:
        names.append(TOP_LEVEL_GROUP)  # model-level variables; normally empty
    file_size = os.path.getsize(path)
    layers = {}
    for name in names:
        if name not in root or not isinstance(root[name], h5py.Group):
            raise ValueError(
                f"{path!r} lists layer {name!r} in `layer_names` but has no group for it."
            )
        group = root[name]
        dsets = [_dataset(group, w, path, file_size) for w in _attr_list(group, "weight_names")]
        if dsets:
            layers[name] = dsets
    return layers


def _dataset(group: h5py.Group, weight_name: str, path: str, file_size: int):
    """The dataset a ``weight_names`` entry points to, checked to be numeric and fully stored."""
    where = f"{path!r}, layer {group.name.lstrip('/')!r}, weight {weight_name!r}"
    obj = group.get(weight_name)
    if not isinstance(obj, h5py.Dataset):
        raise ValueError(f"{where}: listed in `weight_names` but no such dataset exists.")
    if obj.dtype.kind not in "biuf":
        raise ValueError(f"{where}: dtype {obj.dtype} is not numeric.")
    layout = obj.id.get_create_plist().get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        offset, size = obj.id.get_offset(), obj.id.get_storage_size()
        if obj.size and (offset is None or offset + size > file_size):
            raise ValueError(f"{where}: its data is missing or lies past the end of the file.")
        return obj
    if layout == h5py.h5d.COMPACT:
        return obj
    try:
        return obj[()]
    except OSError as err:
        raise ValueError(f"{where}: the data cannot be read (corrupt file?): {err}") from err


# ---------------------------------------------------------------- assigning


def load_weights(model, path, skip_mismatch: bool = False) -> None:
    """Load a weight file into ``model``: legacy HDF5 by layer name, Keras 3 files natively.

    Args:
        model: a built Keras model.
        path: a legacy ``.h5``/``.hdf5`` weight file (by layer name, all or nothing), or a Keras 3
            ``.keras`` / ``.weights.h5`` file (handed to ``model.load_weights``).
        skip_mismatch: leave layers that do not match the file as they are (with a warning)
            instead of raising.
    """
    path = _existing_path(path)
    if path.endswith(NATIVE_SUFFIXES):
        model.load_weights(path, skip_mismatch=skip_mismatch)
        return
    with _open_h5(path) as f:
        plan = _layer_datasets(f, path)  # h5py datasets: read one at a time while assigning
        assign_layer_weights(model, plan, source=path, skip_mismatch=skip_mismatch)


def assign_layer_weights(model, plan: WeightPlan, *, source: str, skip_mismatch: bool = False):
    """Assign ``{layer name: arrays}`` to the model's layers by name, all or nothing.

    Every layer, weight count and shape is checked before the first assignment, so a mismatch
    leaves the model untouched. Arrays follow each layer's legacy weight order (trainable then
    non-trainable: kernel, bias; gamma, beta, moving_mean, moving_variance). Values may be NumPy
    arrays or anything ``np.asarray`` reads, such as h5py datasets (read one at a time).

    Args:
        model: the Keras model to fill.
        plan: arrays per layer name; a nested sub-model is matched as a whole when the plan has
            its name, else through its own layers.
        source: where the plan came from (a path or URL), named in errors.
        skip_mismatch: warn and skip mismatched layers instead of raising.
    """
    targets = _model_targets(model, plan)
    problems, bad_layers = _diff(targets, plan)
    if problems and not skip_mismatch:
        raise ValueError(_describe(source, model, problems, len(targets.keys() & plan.keys())))
    if problems:
        warnings.warn(
            f"Loading {source!r} with skip_mismatch=True: skipped layers {sorted(bad_layers)}, "
            f"left as they are:\n  {_problem_lines(problems)}",
            stacklevel=2,
        )
    for name, variables in targets.items():
        if name in plan and name not in bad_layers:
            for variable, value in zip(variables, plan[name]):
                _assign(variable, value)


def _assign(variable, value) -> None:
    """Copy ``value`` (an array or h5py dataset) into ``variable``; large ones in place, by slices.

    On TensorFlow, a weight over ``ASSIGN_SLICE_BYTES`` is written straight into the variable's
    existing buffer one slice at a time (``scatter_update`` along the first axis), instead of
    converting the whole array to a new tensor that replaces the buffer. Weights up to
    ``WHOLE_READ_BYTES`` are read from the file in one go, larger ones slice by slice, so loading
    VGG16's 411 MB ``fc1`` kernel needs a few MB of extra memory instead of two full copies.
    """
    dtype = np.dtype(variable.dtype)
    shape = tuple(variable.shape)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    target = variable.value if keras.backend.backend() == "tensorflow" else None
    if nbytes <= ASSIGN_SLICE_BYTES or not shape or not hasattr(target, "scatter_update"):
        variable.assign(np.asarray(value, dtype=dtype))
        return
    import tensorflow as tf

    if nbytes <= WHOLE_READ_BYTES:
        value = np.asarray(value, dtype=dtype)
    rows = max(1, ASSIGN_SLICE_BYTES // (nbytes // shape[0]))
    for start in range(0, shape[0], rows):
        chunk = _read_rows(value, start, min(start + rows, shape[0]), dtype)
        target.scatter_update(tf.IndexedSlices(chunk, tf.range(start, start + len(chunk))))


def _read_rows(value, start: int, stop: int, dtype) -> np.ndarray:
    """``value[start:stop]`` as an array of ``dtype``; HDF5 data is read straight into it."""
    if isinstance(value, h5py.Dataset):
        out = np.empty((stop - start,) + tuple(value.shape[1:]), dtype)
        value.read_direct(out, source_sel=np.s_[start:stop])
        return out
    return np.asarray(value[start:stop], dtype=dtype)


def _legacy_weights(layer) -> list:
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _model_targets(model, plan: WeightPlan) -> dict[str, list]:
    """Model side of pass 1: ``{layer name: variables}`` for each layer with weights."""
    targets: dict[str, list] = {}
    for layer in model.layers:
        variables = _legacy_weights(layer)
        if not variables:
            continue
        if isinstance(layer, keras.Model) and layer.name not in plan:
            nested = _model_targets(layer, plan)
        else:
            nested = {layer.name: variables}
        clash = sorted(targets.keys() & nested.keys())
        if clash:
            raise ValueError(
                f"Model {model.name!r} has several layers named {clash}; cannot load by name."
            )
        targets.update(nested)
    return targets


def _diff(targets: dict[str, list], plan: WeightPlan) -> tuple[list[tuple[str, str]], set[str]]:
    """Every mismatch as ``(kind, readable line)``, and the names of the layers concerned."""
    problems, bad = [], set()
    for name, variables in targets.items():
        before, n_model = len(problems), len(variables)
        if name not in plan:
            problems.append(("missing", f"{name}: missing from the file ({n_model} weights)"))
        elif len(plan[name]) != n_model:
            found, n_file = ", ".join(v.name for v in variables), len(plan[name])
            text = f"{name}: model has {n_model} weights ({found}), file has {n_file}"
            problems.append(("count", text))
        else:
            problems += _layer_problems(name, variables, plan[name])
        if len(problems) > before:
            bad.add(name)
    for name in [n for n in plan if n not in targets]:
        problems.append(
            ("unexpected", f"{name}: in the file but not in the model ({len(plan[name])} weights)")
        )
        bad.add(name)
    return problems, bad


def _layer_problems(name: str, variables: list, values: Sequence) -> list[tuple[str, str]]:
    """Shape and dtype checks for one layer; metadata only (h5py datasets are not read)."""
    problems = []
    for variable, value in zip(variables, values):
        model_shape, file_shape = tuple(variable.shape), tuple(np.shape(value))
        dtype = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype
        where = f"{name}/{variable.name}"
        if model_shape != file_shape:
            problems.append(("shape", f"{where}: model {model_shape} vs file {file_shape}"))
        elif np.dtype(dtype).kind not in "biuf":
            problems.append(("dtype", f"{where}: file dtype {dtype} is not numeric"))
    return problems


def _problem_lines(problems: list[tuple[str, str]]) -> str:
    """The first few problems of each kind, most telling kinds first, one per line."""
    by_kind = {kind: [text for k, text in problems if k == kind] for kind in PROBLEM_KINDS}
    shown = [text for kind in PROBLEM_KINDS for text in by_kind[kind][:PER_KIND_SHOWN]]
    more = len(problems) - len(shown)
    return "\n  ".join(shown + ([f"... and {more} more"] if more > 0 else []))


def _describe(source: str, model, problems: list[tuple[str, str]], shared: int) -> str:
    counts = {kind: sum(k == kind for k, _ in problems) for kind in PROBLEM_KINDS}
    return (
        f"Cannot load weights from {source!r} into model {model.name!r}: {len(problems)} problems "
        f"({counts['shape']} shape, {counts['count']} weight-count and {counts['dtype']} dtype "
        f"mismatches, {counts['missing']} missing layers, {counts['unexpected']} unexpected "
        f"layers; {shared} layer names in common). Nothing was loaded.\n  "
        f"{_problem_lines(problems)}\n"
        "Pass skip_mismatch=True to load the matching layers and leave the others as they are."
    )


# ---------------------------------------------------------------- writing


def save_weights_h5(model, path) -> None:
    """Save the model's weights in the legacy layout, as tf-keras ``save_weights("x.h5")`` does."""
    layers = []
    for layer in model.layers:
        variables = _legacy_weights(layer)
        names = [f"{v.path}:0" for v in variables]
        if len(set(names)) != len(names):
            raise ValueError(f"Layer {layer.name!r} has duplicate weight paths {names}.")
        layers.append((layer.name, list(zip(names, variables))))  # read one at a time when written
    write_weight_file(path, layers, layer_names=[layer.name for layer in model.layers])


def write_weight_file(path, layers, *, layer_names=None) -> None:
    """Write ``[(layer name, [(weight name, array), ...]), ...]`` as a legacy HDF5 weight file.

    Arrays may be NumPy arrays or Keras variables (converted one at a time). Weight names are
    written verbatim (see ``legacy_weight_name`` for the tf-keras form);
    datasets live at ``<layer>/<weight name>``. ``layer_names`` lists all layers in model order,
    weightless ones included (default: the layers given). The file appears atomically: it is
    written to a temporary file in the same folder, synced, then renamed over ``path``.
    """
    path = os.fspath(path)
    layers = [(name, list(weights)) for name, weights in layers]
    layer_names = [name for name, _ in layers] if layer_names is None else list(layer_names)
    _check_writable(layers, layer_names)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            _write_layout(f, layers, layer_names)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_folder(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX); Windows cannot open a folder, nor needs to."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_writable(layers: list, layer_names: list[str]) -> None:
    names = [name for name, _ in layers]
    for label, values in (("layers", names), ("layer_names", layer_names)):
        duplicates = sorted({n for n in values if values.count(n) > 1})
        if duplicates:
            raise ValueError(f"`{label}` names layers more than once: {duplicates}.")
    absent = [n for n in names if n not in layer_names]
    if absent:
        raise ValueError(f"`layer_names` must include every layer written; missing {absent}.")


def _write_layout(f: h5py.File, layers: list, layer_names: list[str]) -> None:
    _write_attr_list(f, "layer_names", layer_names)
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = str(keras.__version__).encode("utf8")
    weights_by_layer = dict(layers)
    for name in layer_names:
        group = f.create_group(name)
        weights = weights_by_layer.get(name, [])
        _write_attr_list(group, "weight_names", [w for w, _ in weights])
        for weight_name, array in weights:
            value = array.numpy() if isinstance(array, keras.Variable) else np.asarray(array)
            group.create_dataset(weight_name, data=value)
    if TOP_LEVEL_GROUP not in layer_names:
        _write_attr_list(f.create_group(TOP_LEVEL_GROUP), "weight_names", [])


def _write_attr_list(group: h5py.Group, name: str, values: list[str]) -> None:
    """Store strings as fixed-length bytes, split into ``name0, name1, ...`` when too large."""
    data = np.array([v.encode("utf8") for v in values], dtype=bytes)
    parts = [data]
    while any(part.nbytes > ATTR_CHUNK_LIMIT for part in parts):
        parts = np.array_split(data, len(parts) + 1)
    if len(parts) == 1:
        group.attrs[name] = data
        return
    for i, part in enumerate(parts):
        group.attrs[f"{name}{i}"] = part
