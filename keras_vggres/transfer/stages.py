"""Stages of a VGG / ResNet model and stage-wise freezing with a BN policy.

Stage names come from `models/specs.py` (the registry's `ModelSpec.stages` are the same). A model
built by our builders carries its stage record (`keras_vggres.models.feature_info`), which is
used when present. Other models (keras.applications' VGG16/19 and ResNet50/101/152(V2), ours
after a `.keras` round trip or `clone_model`) are split by layer name with the rules below, which
give the same answer as the record on our models; both work on a backbone nested inside a bigger
model:

- VGG: `block{b}_*` -> `block{b}`.
- ResNet: `conv1_*`, `pool1_*` -> `stem`; `conv{s}_block{k}_*` -> `conv{s}`; `post_*` -> `post`.
- Both: `flatten`, `fc1`, `fc2`, `predictions`, `avg_pool`, `max_pool` -> `head`. When the
  backbone is nested in a wrapper (`keras.Sequential([backbone, Dense])`, `classifier(...)`),
  every layer the wrapper adds around it (except its inputs) also belongs to `head`: those are
  new layers, trained with the head.
- The input layer and the `preprocessing` layer belong to no stage: they have no weights.

Freezing sets `layer.trainable`. Keras 3 runs a BatchNormalization layer whose `trainable` is
False in inference mode (its moving statistics never move, even inside `fit`), so the BN policy
`bn="frozen"` simply marks every BN layer of the pretrained stages non-trainable, also in stages
whose convolutions train. The BN policy does not touch the `head` stage: BN layers there are new
and follow their stage. Changing `trainable` only takes effect after the model is (re)compiled.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import keras

from keras_vggres._checks import BN_POLICIES, check_choice
from keras_vggres.models.features import feature_info
from keras_vggres.models.specs import (FAMILY_STAGES, HEAD, HEAD_LAYERS, POST,  # noqa: F401
                                       STEM)
from keras_vggres.models.specs import family as model_family

NO_STAGE_LAYERS = ("preprocessing",)
_RECORDED_FAMILIES = {names: family for family, names in FAMILY_STAGES.items()}
# Layer names that identify a family; the first match wins (V2 before v1: both have conv1_conv).
FAMILY_MARKERS = (("resnet_v2", re.compile(r"post_bn$|conv\d+_block\d+_preact_bn$")),
                  ("resnet", re.compile(r"conv1_conv$")),
                  ("vgg", re.compile(r"block1_conv1$")))
EXPECTED_NAMES = ("block1_conv1 (VGG)", "conv1_conv (ResNet)", "post_bn (ResNet V2)")
_VGG_BLOCK = re.compile(r"(block\d+)_")
_RESNET_BLOCK = re.compile(r"(conv\d+)_block\d+_")
_STEM_PREFIXES = ("conv1_", "pool1_")


# ----------------------------------------------------------------------------- finding stages
def family_of(model):
    """'vgg', 'resnet', 'resnet_v2' from `model`'s stage record, else its own layer names; or
    None."""
    info = feature_info(model)
    if info is not None:
        return _RECORDED_FAMILIES[tuple(stage.stage for stage in info)]
    names = [layer.name for layer in getattr(model, "layers", ())]
    for family, marker in FAMILY_MARKERS:
        if any(marker.match(name) for name in names):
            return family
    return None


def find_backbone(model):
    """Return `(backbone, family)`: `model` itself, or the one VGG/ResNet model nested in it."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received an object of type "
                        f"{type(model).__name__}.")
    family = family_of(model)
    if family is not None:
        return model, family
    found, pending = [], [layer for layer in model.layers if isinstance(layer, keras.Model)]
    while pending:
        inner = pending.pop(0)
        family = family_of(inner)
        if family is not None:
            found.append((inner, family))
        else:
            pending += [layer for layer in inner.layers if isinstance(layer, keras.Model)]
    if len(found) > 1:
        raise ValueError(f"Model {model.name!r} contains {len(found)} VGG/ResNet backbones "
                         f"({[inner.name for inner, _ in found]}); pass one of them instead.")
    if not found:
        shown = [layer.name for layer in model.layers][:12]
        raise ValueError(
            f"Model {model.name!r} is not a keras_vggres VGG or ResNet model and contains none: "
            f"expected layers named like {EXPECTED_NAMES}; its layers are {shown}"
            f"{' ...' if len(model.layers) > 12 else ''}.")
    return found[0]


def stage_of(layer_name, family):
    """The stage of a layer of a `family` backbone, by name; None for input/preprocessing."""
    if layer_name in HEAD_LAYERS:
        return HEAD
    if family == "vgg":
        match = _VGG_BLOCK.match(layer_name)
        return match.group(1) if match else None
    if layer_name.startswith(_STEM_PREFIXES):
        return STEM
    match = _RESNET_BLOCK.match(layer_name)
    if match:
        return match.group(1)
    return POST if layer_name.startswith(f"{POST}_") else None


def collect(model):
    """`(backbone, family, {stage: [layers]})`; see `stage_layers`."""
    backbone, family = find_backbone(model)
    info = feature_info(backbone)
    groups = _recorded_groups(backbone, info) if info else _named_groups(backbone, family)
    if backbone is not model:
        groups[HEAD] += _wrapper_layers(model, backbone)
    return backbone, family, groups


def stage_output(backbone, groups, stage):
    """The layer giving `stage`'s feature map: the recorded one, else the stage's last layer
    (every layer of a stage feeds it)."""
    info = feature_info(backbone)
    if info is None:
        return groups[stage][-1]
    return backbone.get_layer(next(s.layer for s in info if s.stage == stage))


def _recorded_groups(backbone, info):
    by_name = {layer.name: layer for layer in backbone.layers}
    return {stage.stage: [by_name[name] for name in stage.layers] for stage in info}


def _named_groups(backbone, family):
    """The layer-name rules (`stage_of`) for models without a record."""
    groups = {stage: [] for stage in FAMILY_STAGES[family]}
    for layer in backbone.layers:
        stage = stage_of(layer.name, family)
        if stage is None:
            if layer.weights and layer.name not in NO_STAGE_LAYERS:
                raise ValueError(f"Layer {layer.name!r} of {backbone.name!r} has weights but "
                                 f"belongs to no {family} stage {tuple(groups)}.")
            continue
        if stage not in groups:
            raise ValueError(f"Layer {layer.name!r} of {backbone.name!r} names stage {stage!r}, "
                             f"which a {family} model does not have: {tuple(groups)}.")
        groups[stage].append(layer)
    return groups


def _contains(container, layer):
    return any(inner is layer or (isinstance(inner, keras.Model) and _contains(inner, layer))
               for inner in container.layers)


def _wrapper_layers(model, backbone):
    """The layers a wrapper adds around `backbone` (inputs excluded), in model order."""
    added = []
    for layer in model.layers:
        if layer is backbone or isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model) and _contains(layer, backbone):
            added += _wrapper_layers(layer, backbone)
        else:
            added.append(layer)
    return added


def stage_layers(model):
    """The layers of each stage of a VGG or ResNet model, in model order.

    Our builders' stage record is used when the model has one; otherwise the model family and
    stages are read from layer names, not from the Python class. This works on our models, after
    a `.keras` save/load, on keras.applications' models, and on a backbone nested inside a
    bigger model (pass the outer model or the backbone). Also available as `stages` (its
    former name, kept for existing callers).

    Args:
        model: a keras_vggres VGG/ResNet model, or a model that contains exactly one.

    Returns:
        An ordered dict `{stage name: [layers]}` with every stage of the family
        (`keras_vggres.registry` `ModelSpec.stages`): VGG `block1..block5, head`; ResNet
        `stem, conv2..conv5, head` (V2: `post` before `head`). A stage the model lacks is an
        empty list (e.g. `head` of a no-top model without pooling). Input and `preprocessing`
        layers belong to no stage (they have no weights); in a wrapper, every layer added around
        the backbone belongs to `head`.

    Raises:
        ValueError: `model` is no VGG/ResNet model (the message lists the layer names expected),
            contains several, or has a weighted layer no stage rule covers.
    """
    return collect(model)[2]


stages = stage_layers  # the former name; `keras_vggres.transfer.stages` is this function too


# ----------------------------------------------------------------------------- freezing
@dataclass(frozen=True)
class FreezeSummary:
    """Parameters per stage after `freeze` / `unfreeze`; `str()` prints a table.

    `frozen` counts every non-trainable weight, BatchNorm moving statistics included (like
    `model.summary()`'s "non-trainable params"). `bn` says per stage whether its BatchNorm layers
    train ("train"), are frozen ("frozen"), both ("mixed") or are absent ("-").
    """

    model_name: str
    trainable: dict
    frozen: dict
    bn: dict

    @property
    def total_trainable(self):
        return sum(self.trainable.values())

    @property
    def total_frozen(self):
        return sum(self.frozen.values())

    def as_dict(self):
        """JSON-ready: `{"model", "stages": {stage: {"trainable", "frozen", "bn"}}, totals}`."""
        return {"model": self.model_name,
                "stages": {stage: {"trainable": self.trainable[stage],
                                   "frozen": self.frozen[stage], "bn": self.bn[stage]}
                           for stage in self.trainable},
                "trainable": self.total_trainable, "frozen": self.total_frozen}

    def __str__(self):
        rows = [(stage, f"{self.trainable[stage]:,}", f"{self.frozen[stage]:,}", self.bn[stage])
                for stage in self.trainable]
        rows.append(("total", f"{self.total_trainable:,}", f"{self.total_frozen:,}", ""))
        header = ("stage", "trainable", "frozen", "bn")
        widths = [max(len(row[i]) for row in rows + [header]) for i in range(4)]
        lines = [f"Freeze summary of {self.model_name!r}"]
        for row in [header] + rows:
            lines.append("  ".join(cell.rjust(w) if i in (1, 2) else cell.ljust(w)
                                   for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        return "\n".join(lines)


def freeze_summary(model):
    """The `FreezeSummary` of `model` as it is now (what its next compile will train)."""
    _, _, groups = collect(model)
    trainable_ids = {id(v) for v in model.trainable_weights}
    trainable, frozen, bn = {}, {}, {}
    for stage, members in groups.items():
        seen, trainable[stage], frozen[stage] = set(), 0, 0
        for variable in (v for layer in members for v in layer.weights):
            if id(variable) in seen:
                continue
            seen.add(id(variable))
            count = math.prod(int(dim) for dim in variable.shape)
            if id(variable) in trainable_ids:
                trainable[stage] += count
            else:
                frozen[stage] += count
        bn[stage] = _bn_state([layer for layer in members if _is_bn(layer)], trainable_ids)
    return FreezeSummary(model.name, trainable, frozen, bn)


def freeze(model, up_to=None, stages=None, bn="frozen"):
    """Freeze a model stage by stage, with a BatchNorm policy.

    Frozen layers get `trainable=False`. Recompile the model after calling this (and before
    training): Keras reads `trainable` when it builds the training step. Nothing is compiled
    here. Pass the model you train (the outermost one): containers between it and the backbone
    are set trainable where needed, but models above the one passed are not touched.

    Args:
        model: a VGG/ResNet model or a model containing one (see `stage_layers`).
        up_to: a stage name: freeze every stage from the first one up to and including this one
            (`up_to="conv4"` freezes stem, conv2, conv3, conv4) and make every later stage
            trainable.
        stages: a stage name or a list of them: freeze exactly these; the others keep their
            state. Pass exactly one of `up_to` and `stages`.
        bn: `"frozen"` (default): every BatchNorm layer outside the head is frozen, also in
            trainable stages, so it runs in inference mode and its moving statistics never move;
            `"train"`: BatchNorm layers in trainable stages train (batch statistics in
            training, moving statistics updated, gamma/beta learned).

    Returns:
        The `FreezeSummary` after the change.
    """
    if (up_to is None) == (stages is None):
        raise ValueError("Pass exactly one of `up_to` or `stages`; received "
                         f"up_to={up_to!r}, stages={stages!r}.")
    check_choice("bn", bn, BN_POLICIES)
    backbone, _, groups = collect(model)
    names = tuple(groups)
    if up_to is not None:
        check_choice("up_to", up_to, names)
        cut = names.index(up_to)
        want = {stage: index > cut for index, stage in enumerate(names)}
    else:
        chosen = _check_stages(stages, names)
        want = {stage: stage not in chosen and _stage_trainable(groups[stage])
                for stage in names}
    _apply(model, backbone, groups, want, bn)
    return freeze_summary(model)


def unfreeze(model, stages=None, bn="frozen"):
    """Make stages trainable again, with a BatchNorm policy (see `freeze`).

    Recompile the model after calling this: Keras reads `trainable` when it builds the training
    step. Nothing is compiled here.

    Args:
        model: a VGG/ResNet model or a model containing one (see `stage_layers`).
        stages: a stage name or a list of them; None: every stage. The others keep their state.
        bn: `"frozen"` (default) keeps every BatchNorm layer outside the head frozen, so
            convolutions train while BN statistics stay put; `"train"` lets BatchNorm layers in
            trainable stages train too.

    Returns:
        The `FreezeSummary` after the change.
    """
    check_choice("bn", bn, BN_POLICIES)
    backbone, _, groups = collect(model)
    names = tuple(groups)
    chosen = names if stages is None else _check_stages(stages, names)
    want = {stage: stage in chosen or _stage_trainable(groups[stage]) for stage in names}
    _apply(model, backbone, groups, want, bn)
    return freeze_summary(model)


def _check_stages(value, names):
    chosen = (value,) if isinstance(value, str) else tuple(value)
    for stage in chosen:
        if stage not in names:
            raise ValueError(f"`stages` must name stages of this model, one of {names}; "
                             f"received stages={value!r}.")
    return chosen


def _apply(model, backbone, groups, want, bn):
    """Set `trainable` on every stage layer; open the containers so nothing stays masked."""
    _open_containers(model, backbone)
    for stage, members in groups.items():
        for layer in members:
            if _is_bn(layer) and stage != HEAD:
                layer.trainable = want[stage] and bn == "train"
            else:
                layer.trainable = want[stage]


def _open_containers(model, backbone):
    """A container with trainable=False hides all its variables: set True on the path down to
    `backbone` (this propagates to every sublayer; `_apply` then sets each stage layer)."""
    if not model.trainable:
        model.trainable = True
    for layer in model.layers:
        if isinstance(layer, keras.Model) and (layer is backbone or _contains(layer, backbone)):
            _open_containers(layer, backbone)


def _is_bn(layer):
    return isinstance(layer, keras.layers.BatchNormalization)


def _stage_trainable(members):
    """A stage trains if any of its non-BN layers does (BN follows the policy, not the stage)."""
    return any(layer.trainable for layer in members if not _is_bn(layer))


def _bn_state(bn_layers, trainable_ids):
    if not bn_layers:
        return "-"
    states = {any(id(v) in trainable_ids for v in layer.weights) for layer in bn_layers}
    return "mixed" if len(states) > 1 else ("train" if states.pop() else "frozen")



# ----------------------------------------------------------------------------- recipes
ALL_STAGES = "all"


def unfreeze_stages(stage_names, unfreeze):
    """The backbone stages a fine-tuning phase trains (the model's own `head` excluded).

    Args:
        stage_names: the model's stages (`registry` `ModelSpec.stages`).
        unfreeze: None (the last stage: "conv5", "block5"; V2 adds "post"), a stage name (that
            stage and every later one), a list of stage names, or "all".
    """
    body = tuple(s for s in stage_names if s != HEAD)
    if unfreeze is None:
        unfreeze = next(s for s in reversed(body) if s != POST)
    if unfreeze == ALL_STAGES:
        return body
    if isinstance(unfreeze, str):
        if unfreeze not in body:
            raise ValueError(f"`unfreeze` must be a stage name of the model {body}, a list of "
                             f"them or {ALL_STAGES!r}; received unfreeze={unfreeze!r}.")
        return body[body.index(unfreeze):]
    names = list(unfreeze) if isinstance(unfreeze, (list, tuple)) else None
    if not names or any(n not in body for n in names):
        raise ValueError(f"`unfreeze` must be a stage name of the model {body}, a list of them "
                         f"or {ALL_STAGES!r}; received unfreeze={unfreeze!r}.")
    return tuple(s for s in body if s in names)


def freeze_backbone(model, model_name):
    """Freeze every backbone stage (BatchNorm included); the classifier head stays trainable."""
    return freeze(model, stages=[s for s in FAMILY_STAGES[model_family(model_name)] if s != HEAD])
