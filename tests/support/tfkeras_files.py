"""Reference legacy HDF5 weight files written by tf-keras itself, with reference outputs.

tf-keras (Keras 2) is the writer of the official keras.applications files, so files it writes
with ``save_weights("x.h5")`` are the ground truth for our legacy reader. Weights are seeded
random values (BatchNorm statistics non-trivial, so BN is not an identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Reference:
    """One tf-keras weight file and the output tf-keras computes with it on ``x``."""

    model: str  # keras.applications builder name, e.g. "ResNet50"
    include_top: bool
    size: int
    path: Path
    x: np.ndarray
    y: np.ndarray

    def builder_kwargs(self, **overrides) -> dict:
        """Arguments that rebuild the same architecture (logits, no softmax, for exact compares)."""
        shape = (self.size, self.size, 3)
        kwargs = dict(weights=None, include_top=self.include_top, input_shape=shape)
        if self.include_top:
            kwargs["classifier_activation"] = None
        kwargs.update(overrides)
        return kwargs


def seeded_value(name: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """A random value for a weight, by its role: He-scaled kernels, positive variances."""
    if "moving_variance" in name or "gamma" in name:
        value = rng.uniform(0.5, 1.5, shape)
    elif "kernel" in name:
        fan_in = int(np.prod(shape[:-1]))
        value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    else:  # bias, beta, moving_mean
        value = rng.normal(0.0, 0.1, shape)
    return value.astype(np.float32)


def fill_seeded(model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(seeded_value(variable.name, tuple(variable.shape), rng))


def make_reference(model: str, folder: Path, *, include_top: bool, size: int, seed: int = 0):
    """Build ``tf_keras.applications.<model>``, fill it, save it as legacy .h5, record outputs."""
    import tf_keras

    tag = "top" if include_top else "notop"
    path = Path(folder) / f"{model.lower()}_{tag}_{size}.h5"
    kwargs = dict(weights=None, include_top=include_top, input_shape=(size, size, 3))
    if include_top:
        kwargs["classifier_activation"] = None
    net = getattr(tf_keras.applications, model)(**kwargs)
    fill_seeded(net, seed)
    net.save_weights(str(path))
    x = np.random.default_rng(seed + 1).uniform(-1.0, 1.0, (2, size, size, 3)).astype(np.float32)
    y = np.asarray(net(x, training=False))
    del net
    tf_keras.backend.clear_session()
    return Reference(model, include_top, size, path, x, y)


def tfkeras_outputs(model: str, path: Path, x: np.ndarray, *, include_top: bool) -> np.ndarray:
    """Load ``path`` into a fresh tf-keras model (by position, as tf-keras does) and run ``x``."""
    import tf_keras

    kwargs = dict(weights=None, include_top=include_top, input_shape=x.shape[1:])
    if include_top:
        kwargs["classifier_activation"] = None
    net = getattr(tf_keras.applications, model)(**kwargs)
    net.load_weights(str(path))
    y = np.asarray(net(x, training=False))
    del net
    tf_keras.backend.clear_session()
    return y
