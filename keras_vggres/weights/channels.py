"""Pretrained weights for inputs with C != 3 channels: adapt the first convolution, as timm does.

C = 1: the RGB kernels are summed over their input channels, so a grey image gives what the
RGB network gives on that grey image replicated to RGB (with the same per-channel
preprocessing on every channel). C > 3: the RGB kernel is repeated over the C channels and
scaled by 3 / C, which keeps the output's scale for inputs whose channels look alike. The
preprocessing of such a model is the channel-mean of its weights' own
(`transforms.PreprocessMode.for_channels`).
"""

from __future__ import annotations

import numpy as np

RGB = 3


def describe(channels):
    """How a first convolution is adapted to `channels` inputs (None for RGB)."""
    if channels == RGB:
        return None
    if channels == 1:
        return "first convolution summed over its RGB input channels (timm's in_chans=1)"
    return (f"first convolution's RGB kernel repeated over {channels} input channels and scaled "
            f"by 3/{channels} (timm's in_chans={channels})")


def adapt_kernel(kernel, channels):
    """A Keras conv kernel (h, w, 3, out) -> (h, w, channels, out)."""
    kernel = np.asarray(kernel)
    if kernel.ndim != 4 or kernel.shape[2] != RGB:
        raise ValueError(f"Only a first convolution with 3 input channels can be adapted; its "
                         f"kernel has shape {kernel.shape}.")
    if channels == RGB:
        return kernel
    if channels == 1:
        return kernel.sum(axis=2, keepdims=True, dtype=np.float64).astype(kernel.dtype)
    repeats = -(-channels // RGB)
    tiled = np.concatenate([kernel] * repeats, axis=2)[:, :, :channels, :]
    return (tiled.astype(np.float64) * (RGB / channels)).astype(kernel.dtype)


def adapt_plan(plan, layer, channels):
    """A weight plan ({layer: [kernel, bias, ...]}) with `layer`'s kernel adapted to `channels`.

    Values stay lazy (h5py datasets) except that one kernel, read and adapted here.
    """
    if channels == RGB:
        return plan
    if layer not in plan:
        raise ValueError(f"The weights have no layer {layer!r} to adapt to {channels} input "
                         "channels.")
    adapted = dict(plan)
    values = list(plan[layer])
    values[0] = adapt_kernel(values[0], channels)
    adapted[layer] = values
    return adapted
