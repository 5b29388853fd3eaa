"""The stage record a builder leaves on its model, and `feature_info` to read it.

Like keras-hub's `pyramid_outputs`, kimm's `features` or timm's `feature_info`: for every stage,
the layer giving its feature map, its channels, its reduction (input size / map size) and the
names of its layers. Stage outputs, channels and reductions come from `specs.stage_features`;
the members of a stage are found in the built graph (the layers between the previous stage's
output and this one's), so no layer-name rule is involved. The record is a plain Python
attribute: it is not saved, so a reloaded or cloned model has none (`feature_info` -> None).
"""

from __future__ import annotations

from dataclasses import dataclass

from keras_vggres.models.specs import HEAD

ATTRIBUTE = "_keras_vggres_feature_info"


@dataclass(frozen=True)
class StageInfo:
    """One stage of a model built by keras_vggres.

    `layer` gives the stage's feature map; `layers` are the stage's layer names in
    `model.layers` order. For `head` (always last), `reduction` is None, and `layer` and
    `channels` are None when the model has no head (no top, no pooling).
    """

    stage: str
    layer: str | None
    channels: int | None
    reduction: int | None
    layers: tuple


def feature_info(model):
    """The stages of `model` as its builder recorded them: a tuple of `StageInfo`, or None.

    None for a model our builders did not make: keras.applications' models, or one of ours
    after a `.keras` save/load or `clone_model` (the record is not serialized). The layer-name
    rules of `keras_vggres.transfer.stages` cover those and agree with the record.
    """
    return getattr(model, ATTRIBUTE, None)


def record_stages(model, body_input, stage_specs):
    """Attach the stage record to a freshly built `model` and return it.

    Args:
        model: the functional model a builder just made.
        body_input: the tensor the body was called on (after any preprocessing layer, which,
            like the input layer, belongs to no stage).
        stage_specs: `specs.stage_features(model_name, variant)`: the body stages in order.
    """
    start, infos = body_input, []
    for spec in stage_specs:
        end = model.get_layer(spec.layer).output
        infos.append(StageInfo(spec.stage, spec.layer, spec.channels, spec.reduction,
                               _layers_between(model, start, end)))
        start = end
    head = _layers_between(model, start, model.outputs[0])
    channels = int(model.outputs[0].shape[-1]) if head else None
    infos.append(StageInfo(HEAD, head[-1] if head else None, channels, None, head))
    setattr(model, ATTRIBUTE, tuple(infos))
    return model


def _history(tensor):
    layer, node_index, tensor_index = tensor._keras_history
    return layer, node_index, tensor_index


def _layers_between(model, start, end):
    """Names of the layers computing `end` from `start` (exclusive), in `model.layers` order."""
    stop = _history(start)
    found, pending = set(), [end]
    while pending:
        tensor = pending.pop()
        layer, node_index, tensor_index = _history(tensor)
        if (layer, node_index, tensor_index) == stop or id(layer) in found:
            continue
        found.add(id(layer))
        pending += layer._inbound_nodes[node_index].input_tensors
    return tuple(layer.name for layer in model.layers if id(layer) in found)
