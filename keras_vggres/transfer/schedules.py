"""Learning-rate schedules for fine-tuning: linear warmup, then cosine decay.

`WarmupCosine` lives with the other Keras objects a saved file may name
(`keras_vggres._keras_objects`), so that registering it never imports anything else of ours.
"""

from keras_vggres._keras_objects import WarmupCosine

__all__ = ["WarmupCosine"]
