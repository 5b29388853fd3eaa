"""Measurements on this machine: forward latency / throughput, and a training step's peak memory.

Timings call `model.predict_on_batch` on a fixed random batch: `warmup` calls first (the first
one traces the function; none are recorded), then `runs` timed calls with `time.perf_counter`,
reported as median, min and max. Results depend on the machine and its load; they are
measurements, not properties of the model.
"""

from __future__ import annotations

import logging
import statistics
import time
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from keras_vggres._checks import check_int

PEAK_LOSS = "sparse_categorical_crossentropy"


class Timing(NamedTuple):
    """Seconds per call of `runs` timed calls (warm-up excluded)."""

    median: float
    min: float
    max: float
    runs: int
    warmup: int


def _batch(model, batch_size):
    shape = (batch_size,) + tuple(int(d) for d in model.inputs[0].shape[1:])
    return np.random.default_rng(0).uniform(0, 255, shape).astype("float32")


def time_forward(model, batch_size, *, runs=5, warmup=2):
    """Time inference (`predict_on_batch`) of `model` on a batch of `batch_size` random images.

    Args:
        model: a built Keras model with a static input shape.
        batch_size: images per call.
        runs: timed calls (>= 1).
        warmup: untimed calls first (>= 0; the first call includes tracing).

    Returns:
        A `Timing` in seconds per call.
    """
    batch_size = check_int("batch_size", batch_size, low=1)
    runs = check_int("runs", runs, low=1)
    warmup = check_int("warmup", warmup, low=0)
    x = _batch(model, batch_size)
    seconds = []
    with _quiet_retracing():
        for _ in range(warmup):
            model.predict_on_batch(x)
        for _ in range(runs):
            start = time.perf_counter()
            model.predict_on_batch(x)
            seconds.append(time.perf_counter() - start)
    return Timing(statistics.median(seconds), min(seconds), max(seconds), runs, warmup)


@contextmanager
def _quiet_retracing():
    """Each timing traces once per batch shape on purpose: mute TensorFlow's retracing warning."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def _device():
    import tensorflow as tf

    return "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"


def train_step_peak_bytes(model, batch_size):
    """Measured peak memory of one training step of `model` (TensorFlow backend), in bytes.

    Method: TensorFlow's allocator statistics (`tf.config.experimental.get_memory_info`,
    available for CPU:0 as for GPUs). An uncompiled model is compiled with SGD and sparse
    categorical cross-entropy. One `train_on_batch` at `batch_size` runs first, untimed and
    unmeasured (tracing, optimizer state); then the peak counter is reset and a second step
    runs. The result is that step's peak minus the bytes allocated before it (weights,
    optimizer state), i.e. the step's activations, gradients and temporaries.
    """
    from keras_vggres._backend import require_tensorflow

    tf = require_tensorflow("train_step_peak_bytes (the measured memory peak)")
    batch_size = check_int("batch_size", batch_size, low=1)
    if not model.compiled:
        model.compile(optimizer="sgd", loss=PEAK_LOSS)
    x = _batch(model, batch_size)
    y = np.zeros((batch_size,), "int32")
    model.train_on_batch(x, y)
    device = _device()
    tf.config.experimental.reset_memory_stats(device)
    before = tf.config.experimental.get_memory_info(device)["current"]
    model.train_on_batch(x, y)
    return tf.config.experimental.get_memory_info(device)["peak"] - before
