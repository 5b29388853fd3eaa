"""Assign ``{layer name: arrays}`` to a model by layer name, all or nothing.

Three passes, so that a bad plan never half-loads a model and peak extra memory stays about
one weight tensor:

1. match (metadata only): every layer, weight count and shape of the plan against the model;
2. check: storage of h5py datasets, dtypes, then values block by block (`refusals.py`);
3. assign: one weight at a time; large ones in place, slice by slice (`assign_value`).

Plans come from legacy HDF5 files (values are h5py datasets, read lazily) and from converted
torchvision files (NumPy arrays).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import h5py
import keras
import numpy as np

from keras_vggres.weights import refusals

PROBLEM_KINDS = ("shape", "count", "missing", "unexpected")  # most telling first
PER_KIND_SHOWN = 3
WHOLE_READ_BYTES = 16 << 20  # larger weights are read from the file in slices
ASSIGN_SLICE_BYTES = 4 << 20  # larger weights are assigned in place, slice by slice

WeightPlan = Mapping[str, Sequence]  # layer name -> arrays (or h5py datasets) in file order


def assign_layer_weights(model, plan: WeightPlan, *, source: str, skip_mismatch: bool = False,
                         allow_nonfinite: bool = False) -> None:
    """Assign ``{layer name: arrays}`` to the model's layers by name, all or nothing.

    Every layer, weight count and shape is compared before any data is read, then every value
    is checked (float data, finite, fully stored in its file) before the first assignment, so
    a bad plan leaves the model untouched. Arrays follow each layer's legacy weight order
    (trainable then non-trainable: kernel, bias; gamma, beta, moving_mean, moving_variance).
    Values may be NumPy arrays or h5py datasets (read block by block, never all at once).

    Args:
        model: the Keras model to fill.
        plan: arrays per layer name; a nested sub-model is matched as a whole when the plan has
            its name, else through its own layers.
        source: where the plan came from (a path or URL), named in errors.
        skip_mismatch: warn and skip layers whose names, counts or shapes do not match instead
            of raising. Unsafe values (see `refusals.py`) are refused either way.
        allow_nonfinite: load NaN and infinite values instead of refusing them.
    """
    pairs = match_plan(model, plan, source=source, skip_mismatch=skip_mismatch)
    check_pairs(pairs, source=source, allow_nonfinite=allow_nonfinite)
    for _, variable, value in pairs:
        assign_value(variable, value)


def match_plan(model, plan: WeightPlan, *, source: str, skip_mismatch: bool = False) -> list:
    """Pass 1: ``[(layer name, variable, value), ...]`` to assign; mismatches raise or warn."""
    targets = _model_targets(model, plan)
    problems, bad_layers = _diff(targets, plan)
    if problems and not skip_mismatch:
        raise ValueError(_describe(source, model, problems, len(targets.keys() & plan.keys())))
    if problems:
        warnings.warn(
            f"Loading {source!r} with skip_mismatch=True: skipped layers {sorted(bad_layers)}, "
            f"left as they are:\n  {_problem_lines(problems)}",
            stacklevel=3,
        )
    return [(name, variable, value)
            for name, variables in targets.items() if name in plan and name not in bad_layers
            for variable, value in zip(variables, plan[name])]


def check_pairs(pairs: list, *, source: str, allow_nonfinite: bool = False) -> None:
    """Pass 2: metadata of every value first (storage, dtype), then the values, block by block."""
    labelled = [(f"{source!r}, layer {name!r}, weight {variable.name!r}", variable, value)
                for name, variable, value in pairs]
    for where, variable, value in labelled:
        if isinstance(value, h5py.Dataset):
            refusals.check_storage(value, where)
        refusals.check_dtype(_dtype(value), variable.dtype, where)
    for where, variable, value in labelled:
        refusals.check_values(value, variable.dtype, where, allow_nonfinite=allow_nonfinite)


def _dtype(value) -> np.dtype:
    return value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype


def assign_value(variable, value) -> None:
    """Copy ``value`` (an array or h5py dataset) into ``variable``; large ones in place, by slices.

    On TensorFlow and PyTorch, a weight over ``ASSIGN_SLICE_BYTES`` is written straight into the
    variable's existing buffer one slice at a time along the first axis (`_slice_writer`),
    instead of converting the whole array to a new tensor that replaces the buffer. Weights up
    to ``WHOLE_READ_BYTES`` are read from the file in one go, larger ones slice by slice, so
    loading VGG16's 411 MB ``fc1`` kernel needs a few MB of extra memory instead of two full
    copies. JAX arrays are immutable: there the whole value is assigned at once.
    """
    dtype = np.dtype(variable.dtype)
    shape = tuple(variable.shape)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    write = _slice_writer(variable) if nbytes > ASSIGN_SLICE_BYTES and shape else None
    if write is None:
        variable.assign(np.asarray(value, dtype=dtype))
        return
    if nbytes <= WHOLE_READ_BYTES:
        value = np.asarray(value, dtype=dtype)
    rows = max(1, ASSIGN_SLICE_BYTES // (nbytes // shape[0]))
    for start in range(0, shape[0], rows):
        write(start, refusals.read_rows(value, start, min(start + rows, shape[0]), dtype))


def _slice_writer(variable):
    """``write(start, rows)`` into the variable's own buffer, or None where the backend has no
    in-place update (JAX)."""
    backend, target = keras.backend.backend(), variable.value
    if backend == "tensorflow" and hasattr(target, "scatter_update"):
        import tensorflow as tf

        def write(start, rows):
            target.scatter_update(tf.IndexedSlices(rows, tf.range(start, start + len(rows))))
        return write
    if backend == "torch":
        import torch

        def write(start, rows):
            with torch.no_grad():  # copy_ also moves the rows to the variable's device
                target[start:start + len(rows)].copy_(torch.from_numpy(np.ascontiguousarray(rows)))
        return write
    return None


def legacy_weights(layer) -> list:
    """A layer's variables in the legacy (tf-keras) order: trainable, then non-trainable."""
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _model_targets(model, plan: WeightPlan) -> dict[str, list]:
    """Model side of pass 1: ``{layer name: variables}`` for each layer with weights."""
    targets: dict[str, list] = {}
    for layer in model.layers:
        variables = legacy_weights(layer)
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
    """Shape checks for one layer; metadata only (h5py datasets are not read)."""
    problems = []
    for variable, value in zip(variables, values):
        model_shape, file_shape = tuple(variable.shape), tuple(np.shape(value))
        if model_shape != file_shape:
            where = f"{name}/{variable.name}"
            problems.append(("shape", f"{where}: model {model_shape} vs file {file_shape}"))
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
        f"({counts['shape']} shape and {counts['count']} weight-count mismatches, "
        f"{counts['missing']} missing layers, {counts['unexpected']} unexpected "
        f"layers; {shared} layer names in common). Nothing was loaded.\n  "
        f"{_problem_lines(problems)}\n"
        "Pass skip_mismatch=True to load the matching layers and leave the others as they are."
    )
