"""Workarounds for Keras bugs, each checked against the Keras version it was written for.

Kept apart from the code that uses them so each can be deleted once Keras fixes the bug. A
workaround patches private Keras attributes, so it first checks that they exist (a clear error
otherwise), and says so once when a Keras newer than `WRITTEN_FOR` runs it: the bug may be
fixed there (the multi-worker test, tests/test_distribute.py, shows whether it still is needed).
"""

from __future__ import annotations

import logging
import warnings

import keras
import tensorflow as tf

logger = logging.getLogger("keras_vggres")
WRITTEN_FOR = (3, 15)  # the Keras release (major, minor) the multi-worker workaround targets
PATCHED_ATTRIBUTES = ("_maybe_symbolic_build", "_symbolic_build", "train_step", "test_step",
                      "_distribute_strategy")
_warned = set()


def keras_version():
    """(major, minor) of the installed Keras."""
    major, minor = keras.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def check_written_for(workaround, model):
    """Refuse when the private attributes a workaround patches are gone; note a newer Keras."""
    missing = [name for name in PATCHED_ATTRIBUTES if not hasattr(model, name)]
    if missing:
        raise RuntimeError(
            f"keras_vggres' {workaround} workaround patches Keras internals that Keras "
            f"{keras.__version__} no longer has ({missing}); it was written for Keras "
            f"{WRITTEN_FOR[0]}.{WRITTEN_FOR[1]}. Use that Keras version for multi-worker fit, "
            "or check whether this Keras fixed keras-team/keras#20329 and drop the workaround.")
    if keras_version() > WRITTEN_FOR and workaround not in _warned:
        _warned.add(workaround)
        warnings.warn(
            f"keras_vggres applies its {workaround} workaround, written for Keras "
            f"{WRITTEN_FOR[0]}.{WRITTEN_FOR[1]}, on Keras {keras.__version__}: this Keras may no "
            "longer need it (run tests/test_distribute.py to check).", stacklevel=3)


def fix_multiworker_fit(model):
    """Let `model.fit` / `evaluate` run under MultiWorkerMirroredStrategy (Keras 3 workarounds).

    Keras 3's TensorFlow trainer (3.15 and upstream) breaks with more than one worker, twice:
    - before training it averages one (x, y) batch across workers with
      `strategy.reduce("MEAN", (x, y), axis=None)` only to read its shapes, which fails
      ("Attempt to convert a value (PerReplica ...)", keras-team/keras#20329);
    - after each step it averages the scalar metric results with
      `strategy.reduce("MEAN", value, axis=0)`, which fails on a scalar ("Invalid reduction
      dimension 0 for input with 0 dimensions").
    On `model` only (nothing global is patched), the shapes are read from this worker's first
    replica, and scalar step outputs are given shape (1,) so that the same reduce averages
    them across replicas into a scalar. `build_in_scope` applies it for you; call it yourself
    for a model built in your own `strategy.scope()`. Returns `model`.
    """
    if getattr(model, "_keras_vggres_multiworker", False):
        return model
    check_written_for("multi-worker fit", model)

    def _maybe_symbolic_build(iterator=None, data_batch=None):
        if model._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(_first_replica, next(batches))
                break
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = _maybe_symbolic_build
    model.train_step = _rank1_outputs(model.train_step)
    model.test_step = _rank1_outputs(model.test_step)
    model._keras_vggres_multiworker = True
    return model


def _rank1_outputs(step):
    def wrapped(data):
        return tf.nest.map_structure(
            lambda v: tf.reshape(v, [1]) if tf.is_tensor(v) and v.shape.rank == 0 else v,
            step(data))
    return wrapped


def _first_replica(value):
    if isinstance(value, tf.distribute.DistributedValues):
        return value.values[0]
    return value
