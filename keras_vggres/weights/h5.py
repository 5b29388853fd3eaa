"""The Keras legacy HDF5 weight format: read and write files by layer name.

The legacy layout (Keras 2 / tf-keras ``save_weights("x.h5")``, and every official
keras.applications file) is: root attr ``layer_names`` (all layers, in model order), one group
per layer with attr ``weight_names``, and one dataset per weight found by following that name
(``conv1_conv/kernel:0`` nested, or Keras-1 flat ``block1_conv1_W_1:0``). Only the attrs give
the right order: h5py iterates groups and datasets alphabetically.

Files are untrusted: names are followed link by link and never out of the file, and data is
checked by the rules in `refusals.py`. Loading into a model lives in `load.py` (the entry) and
`assign.py` (by-name assignment); `load_weights` and `assign_layer_weights` are re-exported
here for existing callers.
"""

from __future__ import annotations

import os
import zipfile
from contextlib import contextmanager

import h5py
import keras
import numpy as np

from keras_vggres import _atomic
from keras_vggres.weights import refusals
from keras_vggres.weights.assign import assign_layer_weights, legacy_weights

TOP_LEVEL_GROUP = "top_level_model_weights"
ATTR_CHUNK_LIMIT = 64512  # bytes; HDF5 object-header limit, larger attrs are split name0, name1...
_LAZY = {"load_weights": "keras_vggres.weights.load"}  # load.py imports this module: on use

__all__ = ["read_weight_file", "read_weight_shapes", "write_weight_file", "save_weights_h5",
           "legacy_weight_name", "load_weights", "assign_layer_weights"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------- reading


def read_weight_file(path, *, allow_nonfinite: bool = False) -> dict[str, list[np.ndarray]]:
    """Read every weight of a legacy HDF5 file: ``{layer name: arrays in weight_names order}``.

    Layers come in the file's ``layer_names`` order; weightless layers are left out. Every
    dataset must pass the refusal rules (`refusals.py`): stored in this file, fully written,
    numeric, finite (unless ``allow_nonfinite``).
    """
    path = existing_path(path)
    with open_h5(path) as f:
        datasets = layer_datasets(f, path)
        labelled = [(f"{path!r}, layer {name!r}, dataset {d.name!r}", name, d)
                    for name, dsets in datasets.items() for d in dsets]
        for where, _, dset in labelled:
            refusals.check_storage(dset, where)
        plan: dict[str, list[np.ndarray]] = {name: [] for name in datasets}
        for where, name, dset in labelled:
            array = refusals.read_rows(dset, None, None, dset.dtype)
            refusals.check_values(array, array.dtype, where, allow_nonfinite=allow_nonfinite)
            plan[name].append(array)
        return plan


def read_weight_shapes(path) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """List ``{layer name: [(weight name, shape), ...]}`` without reading any weight data."""
    path = existing_path(path)
    with open_h5(path) as f:
        root = _weights_root(f, path)
        return {
            name: list(zip(_attr_list(root[name], "weight_names"), [tuple(d.shape) for d in dsets]))
            for name, dsets in layer_datasets(f, path).items()
        }


def legacy_weight_name(layer_name: str, weight: str) -> str:
    """The name tf-keras gives a weight in a legacy file, e.g. ``conv1_conv/kernel:0``."""
    return f"{layer_name}/{weight}:0"


def existing_path(path) -> str:
    """``path`` as a string; FileNotFoundError naming it when it is not a file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weight file not found: {path!r}")
    return path


@contextmanager
def open_h5(path):
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
    nested = refusals.resolve(f, "model_weights", f"{path!r}, group 'model_weights'")
    if isinstance(nested, h5py.Group) and _has_attr_list(nested, "layer_names"):
        return nested
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


def layer_datasets(f: h5py.File, path: str) -> dict[str, list[h5py.Dataset]]:
    """Each weighted layer's datasets, following ``weight_names``; metadata only, no data read.

    Names are followed link by link, never out of the file (`refusals.resolve`); the data's
    storage and values are checked later, once shapes have been compared with a model.
    """
    root = _weights_root(f, path)
    names = _attr_list(root, "layer_names")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path!r} lists layers more than once in `layer_names`: {duplicates}.")
    if TOP_LEVEL_GROUP in root and TOP_LEVEL_GROUP not in names:
        names.append(TOP_LEVEL_GROUP)  # model-level variables; normally empty
    layers = {}
    for name in names:
        group = refusals.resolve(root, name, f"{path!r}, layer {name!r}")
        if not isinstance(group, h5py.Group):
            raise ValueError(
                f"{path!r} lists layer {name!r} in `layer_names` but has no group for it."
            )
        dsets = [_dataset(group, name, w, path) for w in _attr_list(group, "weight_names")]
        if dsets:
            layers[name] = dsets
    return layers


def _dataset(group: h5py.Group, layer: str, weight_name: str, path: str) -> h5py.Dataset:
    """The dataset a ``weight_names`` entry points to, checked to be numeric; no data read."""
    where = f"{path!r}, layer {layer!r}, weight {weight_name!r}"
    obj = refusals.resolve(group, weight_name, where)
    if not isinstance(obj, h5py.Dataset):
        raise ValueError(f"{where}: listed in `weight_names` but no such dataset exists.")
    refusals.check_numeric(obj.dtype, where)
    return obj


# ---------------------------------------------------------------- writing


def save_weights_h5(model, path) -> None:
    """Save the model's weights in the legacy layout, as tf-keras ``save_weights("x.h5")`` does."""
    layers = []
    for layer in model.layers:
        variables = legacy_weights(layer)
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
    weightless ones included (default: the layers given). The file appears atomically and durably
    (`_atomic.replacing`: a synced temporary sibling renamed over ``path``).
    """
    layers = [(name, list(weights)) for name, weights in layers]
    layer_names = [name for name, _ in layers] if layer_names is None else list(layer_names)
    _check_writable(layers, layer_names)
    with _atomic.replacing(path, fsync=True) as tmp:
        with h5py.File(tmp, "w") as f:
            _write_layout(f, layers, layer_names)


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
