"""Which Keras backend is running, and a clear error for the features that need TensorFlow.

The builders, weight loading, heads, freezing and `optimize_for_inference` use only
`keras.layers` / `keras.ops` and run on every Keras backend (TensorFlow, JAX, PyTorch). A few
features are TensorFlow programs: `tf.data` pipelines (`transfer.from_folder`), `tf.distribute`
strategies (`keras_vggres.distribute`), SavedModel export and the `finetune` recipe built on
them. On another backend they raise one `RuntimeError` up front, naming the feature, the backend
and what to do, instead of failing deep inside TensorFlow or Keras. TensorFlow is imported only
when such a feature runs, so everything else works where TensorFlow is not installed (the JAX
GPU machines).
"""

from __future__ import annotations

import os

TENSORFLOW = "tensorflow"


def backend() -> str:
    """The running Keras backend: "tensorflow", "jax", "torch" or "numpy"."""
    import keras

    return keras.backend.backend()


def require_tensorflow(feature: str, *, instead: str | None = None):
    """Return the `tensorflow` module, or raise a RuntimeError when Keras runs another backend.

    Args:
        feature: what needs TensorFlow, as the user called it (e.g. "finetune()").
        instead: what to use on other backends, appended to the message.

    Raises:
        RuntimeError: the backend is not TensorFlow; the message names `feature`, the backend
            and how to switch (`KERAS_BACKEND=tensorflow` before Keras is imported).
    """
    name = backend()
    if name != TENSORFLOW:
        chosen = os.environ.get("KERAS_BACKEND")
        source = f"KERAS_BACKEND={chosen!r}" if chosen else "set in keras.json"
        hint = f" {instead}" if instead else ""
        raise RuntimeError(
            f"{feature} needs the TensorFlow backend of Keras, but Keras is running the "
            f"{name!r} backend ({source}). Set KERAS_BACKEND=tensorflow before Keras is "
            f"imported (a new Python process; TensorFlow must be installed) to use it.{hint}")
    import tensorflow as tf

    return tf


def device_kind() -> str:
    """"tpu", "gpu" or "cpu" for the JAX and PyTorch backends, without TensorFlow."""
    import keras

    if backend() == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    try:
        first = keras.distribution.list_devices()[0]
    except (AttributeError, NotImplementedError, IndexError):  # no device list on this backend
        return "cpu"
    kind = first.split(":")[0].lower()
    return {"tpu": "tpu", "gpu": "gpu", "cuda": "gpu"}.get(kind, "cpu")
