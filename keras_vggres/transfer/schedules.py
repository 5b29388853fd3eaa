"""Learning-rate schedules for fine-tuning: linear warmup, then cosine decay."""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_vggres._checks import check_int, check_number


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
