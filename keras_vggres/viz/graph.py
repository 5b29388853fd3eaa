"""Where Grad-CAM looks, and a forward pass that returns that layer's activations together
with the class scores, also when the layer sits inside a nested backbone.

Why not the Keras tutorial's `keras.Model(model.inputs, [layer.output, model.output])`? It only
works when the layer belongs to `model` itself. In a `classifier()` model the backbone is a
nested model: its layers' tensors live in the backbone's own graph, and Keras raises "Graph
disconnected". So every model on the way from the outer model down to the one that owns the
layer is cut at the call of the nested model it contains: the part before that call, the
nested model (recursively: returning the activations and its own outputs), and the part after
it, rebuilt as a model whose input is the nested model's output (Keras 3 takes intermediate
tensors as inputs). The parts reuse the original layers: weights are shared, never copied.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import keras

from keras_vggres.transfer.stages import HEAD, collect, stage_output

SCORE_ACTIVATIONS = ("softmax", "sigmoid")  # the score is taken before these


@dataclass(frozen=True)
class Target:
    """The layer Grad-CAM weighs: `path` runs from the model passed down to the model whose
    `.layers` hold `layer`; `stage` is the stage name when it was chosen by stage."""

    layer: keras.layers.Layer
    path: tuple
    stage: str | None = None


# ----------------------------------------------------------------------------- the layer
def resolve_layer(model, layer=None):
    """The `Target` for `layer`: None (the last body stage's output), a stage name, a layer
    name (the outer model's layers first, then nested models'), or a layer object."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received an object of type "
                        f"{type(model).__name__}.")
    stages = _body_stages(model, required=layer is None)
    if layer is None:
        stage = tuple(stages)[-1]
        return _target(model, stages[stage], stage)
    if isinstance(layer, str) and layer in stages:
        return _target(model, stages[layer], layer)
    if isinstance(layer, str):
        for path in _containers(model):
            for candidate in path[-1].layers:
                if candidate.name == layer:
                    return _target(model, candidate, None, path)
        raise ValueError(_unknown_layer(model, layer, stages))
    if isinstance(layer, keras.layers.Layer):
        for path in _containers(model):
            if any(candidate is layer for candidate in path[-1].layers):
                return _target(model, layer, None, path)
        raise ValueError(f"`layer` {layer.name!r} is not a layer of model {model.name!r} or of "
                         "a model nested in it.")
    raise TypeError(f"`layer` must be None, a stage name, a layer name or a keras Layer; "
                    f"received layer={layer!r}.")


def _body_stages(model, *, required):
    """{stage: output layer} of the model's VGG/ResNet backbone (non-empty stages, head
    excluded, in order); {} for a foreign model unless the default layer needs them."""
    try:
        backbone, _, groups = collect(model)
    except ValueError as err:
        if required:
            raise ValueError(f"{err} To use Grad-CAM on another model, pass `layer=` (the name "
                             "of a layer giving a 4D feature map).") from err
        return {}
    return {stage: stage_output(backbone, groups, stage)
            for stage, members in groups.items() if members and stage != HEAD}


def _containers(model):
    """Paths (model, nested, ...) to every model inside `model`, outer levels first."""
    pending = [(model,)]
    while pending:
        path = pending.pop(0)
        yield path
        pending += [path + (inner,) for inner in path[-1].layers if isinstance(inner, keras.Model)]


def _target(model, layer, stage, path=None):
    if path is None:
        path = next(p for p in _containers(model) if any(c is layer for c in p[-1].layers))
    if isinstance(layer, keras.layers.InputLayer):
        raise ValueError(f"`layer` must be a layer after the input; received {layer.name!r}, "
                         "an input layer.")
    shape = tuple(_call(path[-1], layer).outputs[0].shape)
    if len(shape) != 4:
        raise ValueError(f"`layer` must give a 4D feature map (batch, height, width, channels); "
                         f"layer {layer.name!r} outputs shape {shape}.")
    return Target(layer, tuple(path), stage)


def _unknown_layer(model, name, stages):
    names = [layer.name for path in _containers(model) for layer in path[-1].layers]
    close = difflib.get_close_matches(name, list(stages) + names, n=5)
    hint = f" Did you mean {close}?" if close else ""
    return (f"`layer` must be a stage name {tuple(stages)} or the name of a layer of model "
            f"{model.name!r} or of a model nested in it ({len(names)} layers); received "
            f"layer={name!r}.{hint}")


# ----------------------------------------------------------------------------- the graph
def _call(container, layer):
    """The one node where `container`'s graph calls `layer`."""
    graph = getattr(container, "_functional", None) or container  # Sequential keeps it there
    nodes = [node for depth in graph._nodes_by_depth.values() for node in depth
             if node.operation is layer]
    if len(nodes) != 1:
        raise ValueError(f"Grad-CAM needs layer {layer.name!r} to be called exactly once in "
                         f"{container.name!r}; it is called {len(nodes)} times.")
    return nodes[0]


def _single(tensors, what):
    if len(tensors) != 1:
        raise ValueError(f"Grad-CAM supports models with one input and one output; {what} has "
                         f"{len(tensors)}.")
    return tensors[0]


def score_source(model):
    """`(tensor, dense)`: the tensor the class score is read from, and the `Dense` layer to
    apply to it, if any.

    The score is the logit: the input of a final softmax/sigmoid `Activation` (our
    `classifier`), or the final `Dense`'s pre-activation when the activation is fused into it
    (our `include_top` models, keras.applications). Otherwise the model's output itself.
    """
    output = _single(model.outputs, f"model {model.name!r}")
    last = output._keras_history.operation
    activation = _activation_name(last)
    if activation in SCORE_ACTIVATIONS:
        source = _call(model, last).input_tensors[0]
        return source, last if isinstance(last, keras.layers.Dense) else None
    return output, None


def _activation_name(layer):
    if isinstance(layer, (keras.layers.Activation, keras.layers.Dense)):
        return layer.get_config().get("activation")
    return None


def logits(tensor, dense):
    """The class scores from `score_source`'s tensor: float32, pre-activation."""
    x = keras.ops.cast(tensor, "float32")
    if dense is None:
        return x
    x = keras.ops.matmul(x, keras.ops.cast(dense.kernel, "float32"))
    return x + keras.ops.cast(dense.bias, "float32") if dense.use_bias else x


def forward(model, target, wanted):
    """A function `images -> [activations, *wanted]` for tensors `wanted` of `model`'s graph,
    running the target layer wherever it is nested (see the module docstring)."""
    return _cut(target.path, target.layer, list(wanted))


def _cut(path, layer, wanted):
    container = path[0]
    source = _single(container.inputs, f"model {container.name!r}")
    if len(path) == 1:
        whole = keras.Model(source, [_call(container, layer).outputs[0], *wanted],
                            name=f"{container.name}_gradcam")
        return lambda x: whole(x, training=False)
    child = path[1]
    node = _call(container, child)
    inner = _cut(path[1:], layer, [_single(child.outputs, f"model {child.name!r}")])
    child_in = _single(node.input_tensors, f"the call of {child.name!r}")
    before = None if child_in is source else keras.Model(source, child_in)
    try:
        after = keras.Model(_single(node.outputs, f"the call of {child.name!r}"), wanted,
                            name=f"{container.name}_after_{child.name}")
    except ValueError as err:
        raise ValueError(f"Grad-CAM cannot run the layers of {container.name!r} after "
                         f"{child.name!r} from its output alone: {err}") from err

    def run(x):
        activations, features = inner(x if before is None else before(x, training=False))
        return [activations, *_as_list(after(features, training=False))]

    return run


def _as_list(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
