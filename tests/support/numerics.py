"""Numeric helpers for parity tests: non-trivial BatchNorm statistics, relative differences."""

import numpy as np


def randomize_weights(model, seed=0):
    """Give every BatchNorm non-identity statistics and every bias a non-zero value."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for var in layer.weights:
            leaf = var.path.rsplit("/", 1)[-1]
            shape = tuple(var.shape)
            if leaf == "moving_variance":
                value = rng.uniform(0.5, 1.5, shape)
            elif leaf in ("gamma",):
                value = rng.uniform(0.5, 1.5, shape)
            elif leaf in ("beta", "moving_mean", "bias"):
                value = rng.normal(0.0, 0.1, shape)
            else:
                continue
            var.assign(value.astype(var.dtype))


def copy_weights_by_name(source, target):
    """Copy each weight-carrying layer of `source` into the same-named layer of `target`."""
    copied = 0
    for layer in source.layers:
        if layer.weights:
            target.get_layer(layer.name).set_weights(layer.get_weights())
            copied += 1
    return copied


def weight_layers(model):
    """Ordered (layer name, [weight shapes]) of the layers that carry weights."""
    return [(layer.name, [tuple(w.shape) for w in layer.weights])
            for layer in model.layers if layer.weights]


def rel_diff(actual, expected):
    """max |actual - expected| / max |expected| — the parity measure used in every test."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-12))
