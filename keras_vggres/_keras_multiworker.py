"""Keras 3 workarounds that let `model.fit` run under MultiWorkerMirroredStrategy.

Kept apart from `keras_vggres.distribute` so it can be deleted once Keras fixes its trainer;
the multi-worker test (tests/test_distribute.py) shows whether it is still needed.
"""

from __future__ import annotations

import tensorflow as tf


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
