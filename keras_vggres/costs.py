"""Compute and activation memory of a functional Keras model, read from its graph.

Every figure is per image and derived from the layers' own configs and tensor shapes (nothing
is looked up in a table), so it follows the input size, the variant and any custom head.

MACs (multiply-accumulates) count the multiplications of the weighted layers only, which is
torchvision's and fvcore's "GFLOPS" convention (their figures are MACs):
- convolution: out_h * out_w * k_h * k_w * c_in / groups * c_out (depthwise: x depth_multiplier);
- dense: in_features * units (times any leading non-batch dimensions).

Small ops, reported apart in operations (not MACs): bias add and a fused activation, 1 per
output element; BatchNormalization / LayerNormalization 2 (inference form: scale and shift);
activations 1; Add / Subtract / Multiply / Maximum / Minimum / Average (n_inputs - 1);
max / average pooling the pool window per output element; global pooling 1 per input element;
Rescaling / Normalization 2. Padding, cropping, flatten, reshape, dropout, input and other
weightless data movement count 0. A layer with weights of any other type raises, so no cost
is ever silently dropped.

Activation memory (one training step) is what backprop keeps until the backward pass, plus the
gradients flowing through one layer:
- each tensor (counted once however many layers read it) that a layer's gradient needs:
  convolutions, dense, normalisations, max pooling and Multiply keep their INPUT; activations
  keep their OUTPUT (relu's gradient reads its output), as do convolutions / dense with a fused
  activation and max pooling; padding, Add, average / global-average pooling, flatten,
  reshape and rescaling keep nothing. So the BatchNorm output feeding a ReLU is not kept: that
  ReLU is "in place", as in PyTorch. Unknown weightless layers keep input and output;
- the model input batch;
- the largest (inputs + output) of any single layer: the incoming and outgoing gradient that
  coexist while backprop passes through it;
all times the tensor dtype's bytes and the batch size. Weights, their gradients and optimizer
state are not activations and are left out.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import keras
import numpy as np
from keras import layers

_CONV = (layers.Conv1D, layers.Conv2D, layers.Conv3D)
_DEPTHWISE = (layers.DepthwiseConv1D, layers.DepthwiseConv2D)
_NORM = (layers.BatchNormalization, layers.LayerNormalization)
_ACTIVATIONS = (layers.Activation, layers.ReLU, layers.Softmax, layers.LeakyReLU, layers.ELU,
                layers.PReLU)
_MERGE = (layers.Add, layers.Subtract, layers.Multiply, layers.Maximum, layers.Minimum,
          layers.Average)
_POOL = (layers.MaxPooling1D, layers.MaxPooling2D, layers.MaxPooling3D,
         layers.AveragePooling1D, layers.AveragePooling2D, layers.AveragePooling3D)
_MAX_POOL = (layers.MaxPooling1D, layers.MaxPooling2D, layers.MaxPooling3D)
_GLOBAL_POOL = (layers.GlobalAveragePooling1D, layers.GlobalAveragePooling2D,
                layers.GlobalAveragePooling3D, layers.GlobalMaxPooling1D,
                layers.GlobalMaxPooling2D, layers.GlobalMaxPooling3D)
_GLOBAL_MAX = (layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D, layers.GlobalMaxPooling3D)
_AFFINE = (layers.Rescaling, layers.Normalization)
_FREE = (layers.InputLayer, layers.ZeroPadding1D, layers.ZeroPadding2D, layers.ZeroPadding3D,
         layers.Cropping1D, layers.Cropping2D, layers.Cropping3D, layers.Flatten,
         layers.Reshape, layers.Permute, layers.Dropout, layers.Identity)


class Costs(NamedTuple):
    """Per-image compute of a model: MACs of weighted layers and the small ops beside them."""

    macs: int
    small_ops: int


def _tensors(value):
    return [t for t in keras.tree.flatten(value) if hasattr(t, "shape")]


def _size(tensor):
    """Elements per image (the batch dimension excluded)."""
    return math.prod(int(d) for d in tensor.shape[1:])


def _operations(model):
    """Every operation of a functional model, nested models expanded in place."""
    for op in model.operations:
        if isinstance(op, keras.Model) and hasattr(op, "operations"):
            yield from _operations(op)
        else:
            yield op


def _channels_and_spatial(layer, tensor):
    shape = tuple(int(d) for d in tensor.shape[1:])
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return shape[0], shape[1:]
    return shape[-1], shape[:-1]


def _fused_activation(layer):
    """Whether a conv / dense layer applies a non-linear activation itself (VGG's convs)."""
    activation = getattr(layer, "activation", None)
    return activation is not None and activation is not keras.activations.linear


def _fused_extras(layer, out_size):
    """Bias add and a fused activation: one op per output element each."""
    return out_size * (int(bool(getattr(layer, "use_bias", False))) + int(_fused_activation(layer)))


def layer_costs(op):
    """(MACs, small ops) of one call of `op`, per image; see the module docstring."""
    inputs, outputs = _tensors(op.input), _tensors(op.output)
    out_size = sum(_size(t) for t in outputs)
    if isinstance(op, _CONV + _DEPTHWISE):
        c_in, _ = _channels_and_spatial(op, inputs[0])
        _, spatial = _channels_and_spatial(op, outputs[0])
        window = math.prod(spatial) * math.prod(op.kernel_size)
        if isinstance(op, _DEPTHWISE):
            return window * c_in * op.depth_multiplier, _fused_extras(op, out_size)
        return window * c_in // op.groups * op.filters, _fused_extras(op, out_size)
    if isinstance(op, layers.Dense):
        return int(inputs[0].shape[-1]) * out_size, _fused_extras(op, out_size)
    if isinstance(op, _NORM + _AFFINE):
        return 0, 2 * out_size
    if isinstance(op, _ACTIVATIONS):
        return 0, out_size
    if isinstance(op, _MERGE):
        return 0, (len(inputs) - 1) * out_size
    if isinstance(op, _POOL):
        return 0, math.prod(op.pool_size) * out_size
    if isinstance(op, _GLOBAL_POOL):
        return 0, _size(inputs[0])
    if isinstance(op, _FREE) or not getattr(op, "weights", None):
        return 0, 0
    raise ValueError(f"Cannot count the compute of layer {op.name!r} of type "
                     f"{type(op).__name__}: it has weights and is not one of the counted types "
                     "(convolutions, dense, normalisations).")


def count_costs(model):
    """Per-image MACs and small ops of a functional `model`, summed over its graph."""
    macs = small = 0
    for op in _operations(model):
        op_macs, op_small = layer_costs(op)
        macs += op_macs
        small += op_small
    return Costs(macs, small)


def _kept_tensors(op):
    """The tensors of `op` that its gradient reads (see the module docstring)."""
    inputs, outputs = _tensors(op.input), _tensors(op.output)
    if isinstance(op, _CONV + _DEPTHWISE + (layers.Dense,)):
        return inputs + (outputs if _fused_activation(op) else [])
    if isinstance(op, _MAX_POOL):
        return inputs + outputs
    if isinstance(op, _NORM + _GLOBAL_MAX + (layers.Multiply,)):
        return inputs
    if isinstance(op, _ACTIVATIONS):
        return outputs
    known = _FREE + _AFFINE + _MERGE + _POOL + _GLOBAL_POOL
    return [] if isinstance(op, known) else inputs + outputs


def _bytes(tensor):
    return _size(tensor) * np.dtype(keras.backend.standardize_dtype(tensor.dtype)).itemsize


def activation_bytes(model, batch_size):
    """Estimated activation memory of one training step of `model` at `batch_size`, in bytes.

    Kept tensors + the input batch + the largest single-layer gradient pair, times the batch
    (see the module docstring for the rules).
    """
    kept = {id(t): t for t in _tensors(model.inputs)}
    working = 0
    for op in _operations(model):
        kept.update((id(t), t) for t in _kept_tensors(op))
        working = max(working, sum(_bytes(t) for t in _tensors(op.input) + _tensors(op.output)))
    return (sum(_bytes(t) for t in kept.values()) + working) * batch_size
