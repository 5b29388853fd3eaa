"""An opt-in inference model: BatchNorm folded into the convolution before it, compiled predict.

At inference a BatchNormalization that directly follows a convolution is an affine map per output
channel, so it can be merged into that convolution's kernel and bias. `optimize_for_inference`
returns a new Functional model with every such pair merged (ResNet v1/v1.5, ResNet18/34, VGG-BN:
all of them; ResNetV2: the BNs that follow a conv, its pre-activation BNs stay) and everything
else copied as is. The original model is not modified, and the copy shares no weights with it.

The copy is an `InferenceModel`: a Functional model whose `predict` feeds in-memory arrays to
the compiled predict function batch by batch, without building Keras' per-call input pipeline
(about 85 ms per call on a 2-core CPU, as much as ResNet50 itself takes on one image).
"""

from __future__ import annotations


import keras
import numpy as np

from keras_vggres._checks import JIT_CHOICES
from keras_vggres._keras_objects import InferenceModel  # noqa: F401 (re-exported)
from keras_vggres.models import _common
from keras_vggres.weights.info import attach, weights_info

_FOLDABLE_ACTIVATIONS = ("linear", None)


def optimize_for_inference(model, jit_compile="auto"):
    """Return a copy of `model` for inference: conv -> BatchNorm pairs folded, lean `predict`.

    The copy computes the same function as `model` in inference mode (outputs equal within
    float32 rounding, ~1e-6 relative), with fewer layers and operations. A BatchNormalization
    is folded when its only input is the output of a `Conv2D` with no activation, that output
    has no other consumer, each layer is used once, and the BN output is not a model output.
    The folded conv keeps its name and gains a bias; the BN layer disappears. Training the
    returned model trains the folded convolutions without batch statistics: fine-tune the
    original model instead.

    Args:
        model: a Functional Keras model (what every keras_vggres builder returns); nested
            Functional models are optimised recursively.
        jit_compile: `True` to compile `predict` with XLA, `False` for the backend's graph mode
            (TensorFlow: oneDNN kernels on CPU), or `"auto"` (default): Keras' own rule, which
            turns XLA on where an accelerator is present and off on CPU-only machines, where
            XLA's convolutions are slower than oneDNN's (see benchmarks/README.md).

    Returns:
        A new `InferenceModel` (a Functional `keras.Model`) with the same inputs, outputs,
        output names and shapes.
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise TypeError("`model` must be a Functional keras.Model (as returned by the builders); "
                        f"received an object of type {type(model).__name__}.")
    if jit_compile not in JIT_CHOICES or not isinstance(jit_compile, (bool, str)):
        raise TypeError(f"`jit_compile` must be one of {JIT_CHOICES}; "
                        f"received jit_compile={jit_compile!r}.")
    folded = _fold_model(model)
    optimized = InferenceModel(folded.input, folded.output, name=model.name)
    if model.compiled:
        optimized.compile_from_config(model.get_compile_config())
    if jit_compile != "auto":
        optimized.jit_compile = jit_compile
    return attach(optimized, weights_info(model))


# ------------------------------------------------------------------------- graph analysis
def _layer_calls(model):
    """Every layer call of `model` as (layer, input tensors, output tensors), in graph order.

    Keras has no public node list; `_nodes_by_depth` is what `keras.models.clone_model` walks.
    """
    nodes_by_depth = model._nodes_by_depth
    return [(node.operation, list(node.input_tensors), list(node.outputs))
            for depth in sorted(nodes_by_depth, reverse=True) for node in nodes_by_depth[depth]
            if node.operation is not None and not node.is_input]


def foldable_pairs(model):
    """`{conv layer id: bn layer}` for each conv -> BatchNorm pair of `model` that can be folded."""
    calls = _layer_calls(model)
    producer = {id(t): layer for layer, _, outputs in calls for t in outputs}
    consumers, uses = {}, {}
    for layer, inputs, _ in calls:
        uses[id(layer)] = uses.get(id(layer), 0) + 1
        for t in inputs:
            consumers[id(t)] = consumers.get(id(t), 0) + 1
    model_outputs = {id(t) for t in model.outputs}
    for t in model.outputs:
        consumers[id(t)] = consumers.get(id(t), 0) + 1
    pairs = {}
    for bn, inputs, outputs in calls:
        if type(bn) is not keras.layers.BatchNormalization or len(inputs) != 1:
            continue
        conv = producer.get(id(inputs[0]))
        if (type(conv) is keras.layers.Conv2D and _compatible(conv, bn)
                and consumers[id(inputs[0])] == 1 and uses[id(conv)] == 1 and uses[id(bn)] == 1
                and not model_outputs & {id(t) for t in outputs}):
            pairs[id(conv)] = bn
    return pairs


def _compatible(conv, bn):
    """The BN normalises the conv's channel axis and nothing sits between them."""
    config = conv.get_config()
    if config.get("activation") not in _FOLDABLE_ACTIVATIONS:
        return False
    channels_axis = 1 if config.get("data_format") == "channels_first" else 3
    axis = bn.axis if isinstance(bn.axis, int) else None
    return axis is not None and axis % 4 == channels_axis


# ------------------------------------------------------------------------- rebuilding
def _fold_model(model):
    pairs = foldable_pairs(model)
    folded_bns = {id(bn) for bn in pairs.values()}
    copies = []  # (original, copy, bn or None): weights are filled once the graph is built

    def clone_layer(layer):
        if id(layer) in folded_bns:
            return layer  # never called: `call_layer` passes its input through
        if isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth"):
            return _fold_model(layer)
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a stateless keras.ops operation: nothing to copy
        config = layer.get_config()
        if id(layer) in pairs:
            config["use_bias"] = True
        copy = layer.__class__.from_config(config)
        copies.append((layer, copy, pairs.get(id(layer))))
        return _common.placeholder_kernel(copy)

    def call_layer(layer, *args, **kwargs):
        if id(layer) in folded_bns:
            return args[0]
        return layer(*args, **kwargs)

    with _common.weights_will_load():  # every copied kernel is overwritten right below
        optimized = keras.models.clone_model(model, clone_function=clone_layer,
                                             call_function=call_layer)
    for layer, copy, bn in copies:  # one layer at a time: no second copy of the whole model
        copy.set_weights(folded_weights(layer, bn) if bn is not None else layer.get_weights())
    return optimized


def folded_weights(conv, bn):
    """[kernel, bias] of the conv that equals `bn(conv(x))` in inference mode (float64 math)."""
    def f64(variable):
        return np.asarray(variable.numpy(), dtype=np.float64)

    kernel = f64(conv.kernel)
    channels = kernel.shape[-1]
    bias = f64(conv.bias) if conv.use_bias else np.zeros(channels)
    gamma = f64(bn.gamma) if bn.scale else np.ones(channels)
    beta = f64(bn.beta) if bn.center else np.zeros(channels)
    factor = gamma / np.sqrt(f64(bn.moving_variance) + bn.epsilon)
    dtype = conv.kernel.dtype
    return [(kernel * factor).astype(dtype),
            (beta + (bias - f64(bn.moving_mean)) * factor).astype(dtype)]
