"""The Keras objects of keras_vggres that a saved file may name, registered with Keras.

An `optimize_for_inference` model (`InferenceModel`), the fine-tuning learning-rate schedule in a
checkpoint's optimizer (`WarmupCosine`) and the older in-model preprocessing layer
(`ImageNetPreprocessing`). They live in this one module, which imports nothing else of ours but
the Keras-free leaves, so `keras_vggres._register` can import it the moment Keras is imported
without ever meeting a half-imported module of ours. Their usual homes re-export them.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_vggres._checks import check_choice, check_int, check_number
from keras_vggres._preprocess_math import _apply_ops, resolve_data_format
from keras_vggres.transforms import PREPROCESS_MODES

DEFAULT_BATCH_SIZE = 32  # keras.Model.predict's


@keras.saving.register_keras_serializable(package="keras_vggres")
class InferenceModel(keras.Model):
    """A Functional model whose `predict` skips Keras' per-call input pipeline for arrays.

    `predict(x)` with NumPy arrays or tensors (or a list/dict of them) slices `x` into batches
    and runs each through the same compiled predict function `predict_on_batch` uses, with
    the usual callbacks and progress bar. Anything else (a `tf.data.Dataset`, a generator,
    `steps=`) goes to `keras.Model.predict` unchanged. Results are identical either way.
    """

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        size = _array_batch_size(x)
        if steps is not None or size is None:
            return super().predict(x, batch_size=batch_size, verbose=verbose, steps=steps,
                                   callbacks=callbacks)
        batch_size = batch_size or DEFAULT_BATCH_SIZE
        batches = math.ceil(size / batch_size)
        callbacks = keras.callbacks.CallbackList(callbacks, add_progbar=verbose != 0,
                                                 verbose=verbose, epochs=1, steps=batches,
                                                 model=self)
        callbacks.on_predict_begin()
        outputs = []
        for index in range(batches):
            callbacks.on_predict_batch_begin(index)
            start = index * batch_size
            batch = keras.tree.map_structure(lambda a: a[start:start + batch_size], x)
            outputs.append(self.predict_on_batch(batch))
            callbacks.on_predict_batch_end(index, {"outputs": outputs[-1]})
        callbacks.on_predict_end()
        return keras.tree.map_structure(lambda *parts: np.concatenate(parts), *outputs)


def _array_batch_size(x):
    """The common first dimension of `x`'s arrays/tensors, or None if `x` is anything else."""
    if not isinstance(x, (np.ndarray, list, tuple, dict)) and not keras.ops.is_tensor(x):
        return None
    leaves = keras.tree.flatten(x)
    if not leaves or not all(isinstance(a, np.ndarray) or keras.ops.is_tensor(a)
                             for a in leaves):
        return None
    sizes = {a.shape[0] if len(a.shape) else None for a in leaves}
    if len(sizes) != 1 or None in sizes or 0 in sizes:
        return None
    return sizes.pop()


@keras.saving.register_keras_serializable(package="keras_vggres")
class ImageNetPreprocessing(keras.layers.Layer):
    """Applies an ImageNet preprocessing mode inside a model (input: RGB, values 0-255).

    Equivalent to ``preprocess_input(x, data_format, mode)``; the output has the layer's
    compute dtype (float32 unless a mixed-precision policy is set). Uses only ``keras.ops``.
    The builders now use `add_preprocessing` (standard layers only); this class stays so that
    files saved with it keep loading (``import keras_vggres`` registers it).

    Args:
        mode: one of ``"caffe"``, ``"tf"``, ``"torch"``.
        data_format: ``"channels_last"``, ``"channels_first"`` or ``None`` (Keras default).
    """

    def __init__(self, mode="caffe", data_format=None, **kwargs):
        super().__init__(**kwargs)
        check_choice("mode", mode, tuple(PREPROCESS_MODES))
        self.mode = mode
        self.data_format = resolve_data_format(data_format)

    def call(self, inputs):
        return _apply_ops(
            inputs, PREPROCESS_MODES[self.mode], self.data_format, dtype=self.compute_dtype
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "data_format": self.data_format})
        return config


@keras.saving.register_keras_serializable(package="keras_vggres")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from `warmup_start` to `base_lr` over `warmup_steps`, then cosine decay
    to `min_lr` at `total_steps` (held there afterwards).

    Step `s` (0-based optimizer iterations) of the warmup uses `base_lr * (s + 1) / warmup_steps`
    (with `warmup_start=0`), so the first update is never made with a zero learning rate.

    Args:
        base_lr: peak learning rate (> 0).
        total_steps: steps of warmup + decay (>= 1).
        warmup_steps: steps of linear warmup (0 <= warmup_steps <= total_steps).
        min_lr: final learning rate (0 <= min_lr <= base_lr).
        warmup_start: learning rate the warmup line starts from (before its first step).
    """

    def __init__(self, base_lr, total_steps, warmup_steps=0, min_lr=0.0, warmup_start=0.0,
                 name="warmup_cosine"):
        super().__init__()
        check_number("base_lr", base_lr, low=0, low_open=True)
        check_number("min_lr", min_lr, low=0)
        check_number("warmup_start", warmup_start, low=0)
        check_int("total_steps", total_steps, low=1)
        check_int("warmup_steps", warmup_steps, low=0, high=total_steps)
        if min_lr > base_lr:
            raise ValueError(f"`min_lr`={min_lr} must not exceed base_lr={base_lr}.")
        self.base_lr, self.total_steps, self.warmup_steps = float(base_lr), total_steps, \
            warmup_steps
        self.min_lr, self.warmup_start, self.name = float(min_lr), float(warmup_start), name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        warmup_lr = self.warmup_start + (self.base_lr - self.warmup_start) * (step + 1.0) / warm
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        decayed = self.min_lr + (self.base_lr - self.min_lr) * cosine
        return ops.where(step < self.warmup_steps, warmup_lr, decayed)

    def get_config(self):
        return {"base_lr": self.base_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "min_lr": self.min_lr,
                "warmup_start": self.warmup_start, "name": self.name}
