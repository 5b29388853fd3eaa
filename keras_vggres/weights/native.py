"""Keras 3 native weight files: checked, then loaded by Keras' own loader, all or nothing.

Native files are ``.weights.h5``, ``.keras`` archives and sharded ``.weights.json`` indexes.
Keras' own loader reads and assigns layer by layer, and raises half-way through on a bad file
(15 of 16 variables already overwritten). Here a native load is:

1. checked before Keras sees it: every link and dataset of the HDF5 content (for a `.keras`
   archive, its ``model.weights.h5``; for sharded ``.weights.json``, every shard) passes the
   refusal rules of `refusals.py`, and no dataset may declare more values than the model's
   largest variable, so each of Keras' whole-dataset reads costs about one weight tensor;
2. loaded under a snapshot: every variable of the model (and of its optimizer) is copied to
   host memory, and written back if Keras raises. Memory cost: one host copy of the model's
   variables (VGG16: 528 MB) for the duration of the load.

Keras also skips, with only a warning, a nested container (a list of layers inside a layer) whose
group is missing from the file, leaving those layers freshly initialised. Without
``skip_mismatch`` that partial load is an error here, and the model is restored.

With ``skip_mismatch=True`` Keras itself catches per-layer errors and may leave a layer half
loaded; that is Keras' documented best-effort mode and is not undone here.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field

import h5py
import keras
import numpy as np

from keras_vggres.weights import refusals
from keras_vggres.weights._keras_warnings import replay_warnings
from keras_vggres.weights.assign import assign_value
from keras_vggres.weights.h5 import open_h5

NATIVE_SUFFIXES = (".keras", ".weights.h5", ".weights.json")
ARCHIVE_WEIGHTS = "model.weights.h5"  # where a `.keras` archive keeps its weights


def load_native(model, path: str, *, skip_mismatch: bool = False,
                allow_nonfinite: bool = False) -> None:
    """Check a native file against the refusal rules, then let Keras load it; restore on failure.

    A strict load of a `.keras` file whose structure differs from `model` (Keras raises) falls
    back to the one model nested in the file with `model`'s variable shapes (`nested.py`);
    with ``skip_mismatch=True`` Keras does not raise, so there is no such fallback.
    """
    check_native_file(model, path, allow_nonfinite=allow_nonfinite)
    variables = model_variables(model)
    saved = [np.array(keras.ops.convert_to_numpy(v)) for v in variables]
    try:
        try:
            _keras_load(model, path, skip_mismatch)
        except ValueError as err:
            if isinstance(err, PartialLoadError) or skip_mismatch or not path.endswith(".keras"):
                raise
            _restore(variables, saved)
            _load_nested(model, path, err)
    except BaseException as err:
        _restore(variables, saved)
        err.add_note(f"Loading {path!r} failed; all {len(variables)} variables of model "
                     f"{model.name!r} were restored: nothing was loaded.")
        raise


class PartialLoadError(ValueError):
    """Keras completed a load but left layers freshly initialised (it only warned)."""


def _keras_load(model, path, skip_mismatch):
    caught = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(path, skip_mismatch=skip_mismatch)
    except BaseException:
        replay_warnings(caught, keep_skipped=False)  # those layers are restored anyway
        raise
    skipped = replay_warnings(caught, keep_skipped=skip_mismatch)
    if skipped and not skip_mismatch:
        raise PartialLoadError(
            f"{path!r} does not hold every variable of model {model.name!r}: Keras left "
            f"layers freshly initialised ({skipped[0]}). Pass skip_mismatch=True to accept a "
            "partial load.")


def _load_nested(model, path, keras_error):
    """A `.keras` file whose structure differs: its sub-model that matches `model`, if one.
    Anything that goes wrong on the way re-raises Keras' own error, with the reason chained."""
    from keras_vggres.weights.nested import matching_submodel

    try:
        donor, source = matching_submodel(path, model)
    except Exception as err:
        raise keras_error from err
    if donor is None:
        raise ValueError(
            f"Cannot load {path!r} into model {model.name!r} ({len(model.weights)} variables): "
            f"the file holds model {source.name!r} ({len(source.weights)} variables), and "
            f"neither it nor any model nested in it has {model.name!r}'s variable shapes. "
            f"Build the model the file was saved from, or load it with "
            f"keras_vggres.load_model. (Keras: {str(keras_error).splitlines()[0]})") from None
    for variable, value in zip(model.weights, donor.weights):
        assign_value(variable, np.asarray(keras.ops.convert_to_numpy(value)))


def _restore(variables, saved):
    for variable, value in zip(variables, saved):
        assign_value(variable, value)


def model_variables(model) -> list:
    """Every variable a native load may write: the model's, then its optimizer's."""
    optimizer = getattr(model, "optimizer", None)
    found = list(model.variables) + list(getattr(optimizer, "variables", None) or [])
    unique = {id(v): v for v in found}
    return list(unique.values())


@dataclass
class _Limits:
    """What the model could take from a file: the size bound and the expected dtypes."""

    model: str
    max_size: int = 0  # values in the largest variable
    float_target: dict = field(default_factory=dict)  # shape -> narrowest float dtype
    other: set = field(default_factory=set)  # ("bool" | "int", shape) of non-float variables


def _limits(model) -> _Limits:
    import ml_dtypes  # noqa: F401  (lets NumPy name "bfloat16")

    limits = _Limits(model.name)
    for v in model_variables(model):
        dtype, shape = np.dtype(keras.backend.standardize_dtype(v.dtype)), tuple(v.shape)
        limits.max_size = max(limits.max_size, int(np.prod(shape)))
        if dtype.kind in "biu":
            limits.other.add(("bool" if dtype.kind == "b" else "int", shape))
        else:
            dtype = dtype if dtype.kind == "f" else np.dtype(np.float32)  # bfloat16
            known = limits.float_target.get(shape, dtype)
            limits.float_target[shape] = min(known, dtype, key=lambda d: d.itemsize)
    return limits


def check_native_file(model, path: str, *, allow_nonfinite: bool = False) -> None:
    """Refuse a native file whose HDF5 content breaks a rule (`refusals.py`) or the size bound."""
    limits = _limits(model)
    for label, opener in _contents(path):
        with opener() as f:
            refusals.check_links(f, label)
            names = []
            f.visititems(lambda name, obj: names.append(name)
                         if isinstance(obj, h5py.Dataset) else None)
            for name in names:
                _check_dataset(f[name], f"{label}, dataset {name!r}", limits, allow_nonfinite)


def _check_dataset(dset: h5py.Dataset, where: str, limits: _Limits, allow_nonfinite) -> None:
    shape, size = tuple(dset.shape or ()), dset.size or 0
    if size > limits.max_size:
        raise refusals.UnsafeWeightsError(
            f"{where}: declares shape {shape} ({size} values), more than the largest variable "
            f"of model {limits.model!r} ({limits.max_size} values).")
    refusals.check_storage(dset, where)
    kind = dset.dtype.kind
    if dset.attrs.get("dtype") == "bfloat16" and dset.dtype.itemsize == 2:  # Keras' own marker
        import ml_dtypes

        refusals.check_values(dset, np.float32, where, allow_nonfinite=allow_nonfinite,
                              stored_as=ml_dtypes.bfloat16)
    elif kind == "f":
        target = limits.float_target.get(shape, dset.dtype)
        refusals.check_values(dset, target, where, allow_nonfinite=allow_nonfinite)
    elif kind in "biu":
        category = "bool" if kind == "b" else "int"
        if shape and (category, shape) not in limits.other:
            raise refusals.UnsafeWeightsError(
                f"{where}: dtype {dset.dtype} is not a floating-point type, and model "
                f"{limits.model!r} has no {category} variable of shape {shape}.")
    else:
        refusals.check_numeric(dset.dtype, where)


def _contents(path: str) -> list:
    """``[(label, opener)]`` for each HDF5 content of a native file; openers give h5py files."""
    if path.endswith(".keras"):
        return [(f"{path!r} (its {ARCHIVE_WEIGHTS})", lambda: _open_archive_weights(path))]
    if path.endswith(".weights.json"):
        return [(f"{path!r} (shard {shard!r})", lambda p=shard_path: open_h5(p))
                for shard, shard_path in _shards(path)]
    return [(repr(path), lambda: open_h5(path))]


@contextmanager
def _open_archive_weights(path: str):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path!r} is not a readable `.keras` archive (a zip file): "
                         f"{err}") from err
    with archive:
        if ARCHIVE_WEIGHTS not in archive.namelist():
            raise ValueError(f"{path!r} is a zip without {ARCHIVE_WEIGHTS!r}; a Keras 3 `.keras` "
                             "archive keeps its weights there.")
        try:
            f = h5py.File(archive.open(ARCHIVE_WEIGHTS), "r")
        except OSError as err:
            raise ValueError(f"{path!r}: its {ARCHIVE_WEIGHTS!r} is not a readable HDF5 file: "
                             f"{err}") from err
        with f:
            yield f


def _shards(path: str) -> list[tuple[str, str]]:
    """The shard files a ``.weights.json`` names (plain names beside it, as Keras reads them)."""
    try:
        with open(path, encoding="utf-8") as handle:
            weight_map = json.load(handle)["weight_map"]
        names = sorted({n for v in weight_map.values() for n in ([v] if isinstance(v, str) else v)})
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path!r} is not a Keras sharded-weights index (a JSON object with a "
                         f"`weight_map` of shard file names): {err!r}") from err
    folder = os.path.dirname(os.path.abspath(path))
    for name in names:
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
            raise refusals.UnsafeWeightsError(f"{path!r}: shard name {name!r} is not a plain file "
                                              "name beside the index.")
    return [(name, os.path.join(folder, name)) for name in names]
