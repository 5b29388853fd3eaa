"""What goes on top of a backbone: a classifier head (and its head-only twin), feature taps.

`classifier` nests the backbone in a new functional model and adds pooling, optional hidden
layers, dropout and a float32 output. `classifier_head` returns the head alone, sharing its
layers, so a head can be trained on cached pooled embeddings and the classifier gets the trained
weights. `feature_extractor` returns multi-scale feature maps by stage name or by layer name.
"""

from __future__ import annotations

import difflib

import keras

from keras_vggres._checks import POOLING, check_choice
from keras_vggres.models.specs import TOP_LAYERS
from keras_vggres.transfer.stages import HEAD, POST, STEM, collect, find_backbone, stage_output

ACTIVATIONS = ("softmax", "sigmoid", "linear", None)
POOLING_LAYERS = {"avg": keras.layers.GlobalAveragePooling2D,
                  "max": keras.layers.GlobalMaxPooling2D}
DEFAULT_TAPS = 3  # feature_extractor's default: the last three body stages


# ----------------------------------------------------------------------------- pooling
def output_pooling(model):
    """How `model`'s single output is pooled: None (a 4D feature map), "avg" or "max".

    Raises a ValueError for a model with a classifier top (its features are not exposed) and
    for anything else that is neither a 4D map nor the output of global pooling.
    """
    if len(model.outputs) != 1:
        raise ValueError(f"Model {model.name!r} must have one output (a feature map); it has "
                         f"{len(model.outputs)}.")
    top = [layer.name for layer in model.layers if layer.name in TOP_LAYERS]
    if top:
        raise ValueError(
            f"Model {model.name!r} has a classifier top (layers {top}); build the backbone with "
            "`include_top=False` (pretrained weights still load) so its features are used.")
    output = model.outputs[0]
    if len(output.shape) == 4:
        return None
    producer = output._keras_history.operation
    for pooling, layer_class in POOLING_LAYERS.items():
        if len(output.shape) == 2 and isinstance(producer, layer_class):
            return pooling
    raise ValueError(f"Model {model.name!r} must output a 4D feature map or globally pooled "
                     f"features; its output has shape {tuple(output.shape)}.")


def pool(model, x, pooling, name=None):
    """Pool tensor `x` (the output of `model`) to (batch, channels) as `pooling` says.

    A 4D map is pooled with `pooling` ("avg" or "max"). A model already built with pooling is
    accepted when `pooling` is None or names the same pooling; anything else raises.
    """
    check_choice("pooling", pooling, POOLING)
    done = output_pooling(model)
    if done is None:
        if pooling is None:
            raise ValueError(f"Model {model.name!r} outputs a 4D feature map; `pooling` must be "
                             f"one of {tuple(POOLING_LAYERS)}; received pooling=None.")
        return POOLING_LAYERS[pooling](name=name or f"{pooling}_pool")(x)
    if pooling not in (None, done):
        raise ValueError(f"Model {model.name!r} already pools its output with {done!r} "
                         f"pooling; pass pooling={done!r} or None; received pooling={pooling!r}.")
    return x


# ----------------------------------------------------------------------------- classifier
def classifier(backbone, num_classes, pooling="avg", dropout=0.2, hidden=None,
               activation="softmax", name=None):
    """A classifier on top of a no-top backbone: pool -> [Dense+ReLU]* -> Dense -> activation.

    Layers after the backbone: `avg_pool`/`max_pool`; for each hidden size, `head_dropout{i}`
    and `head_dense{i}` (ReLU); `head_dropout`; `logits` (Dense); `predictions` (Activation with
    dtype float32, so the output is float32 even under a mixed-precision policy). Dropout
    layers are left out when `dropout` is 0.

    A backbone with a classifier top (`predictions`, `fc1`, ...) raises a ValueError: cutting
    it silently would drop layers the caller asked for. Build it with `include_top=False`.

    Training mode: BatchNorm layers with `trainable=False` run in inference mode in Keras 3
    (even inside `fit`), so the BN policy of `freeze`/`unfreeze` decides which BN layers use
    batch statistics and update their moving statistics, and it can change between training
    phases without rebuilding the model (recompile). A backbone with no trainable weights at
    build time is also called with `training=False` (the Keras transfer-learning recipe); note
    that Keras 3 lets an explicit outer `training=True`, as in `fit`, override that stored
    value (keras-team/keras#20285), so it is a statement of intent, not a lock: the trainable
    flags are what keep frozen BN layers frozen.

    Args:
        backbone: a no-top model with one input, outputting a 4D feature map or globally pooled
            features (built with `pooling="avg"`/`"max"`).
        num_classes: number of outputs, an int >= 1 (>= 2 with softmax).
        pooling: `"avg"` or `"max"` global pooling of a 4D map; `None` only for a backbone that
            already pools (a pooled backbone also accepts its own pooling mode).
        dropout: dropout rate in [0, 1) before every Dense layer of the head.
        hidden: None, an int or a sequence of ints: sizes of hidden Dense+ReLU layers.
        activation: `"softmax"`, `"sigmoid"` (multi-label or binary; 1 class allowed),
            `"linear"` or None (logits).
        name: model name; default `"{backbone.name}_classifier"`.

    Returns:
        A functional `keras.Model` (images -> float32 predictions) nesting `backbone`.
    """
    _check_head_args(num_classes, dropout, activation)
    hidden_units = _check_hidden(hidden)
    check_choice("pooling", pooling, POOLING)
    if not isinstance(backbone, keras.Model) or len(backbone.inputs) != 1:
        raise ValueError("`backbone` must be a keras.Model with one image input; received "
                         f"{getattr(backbone, 'name', type(backbone).__name__)!r}.")
    source = backbone.inputs[0]
    inputs = keras.Input(shape=tuple(source.shape[1:]), dtype=source.dtype, name="image")
    frozen = not backbone.trainable_weights
    features = backbone(inputs, training=False) if frozen else backbone(inputs)
    x = pool(backbone, features, pooling)
    for index, units in enumerate(hidden_units, start=1):
        x = _dropout(x, dropout, f"head_dropout{index}")
        x = keras.layers.Dense(units, activation="relu", name=f"head_dense{index}")(x)
    x = _dropout(x, dropout, "head_dropout")
    x = keras.layers.Dense(num_classes, name="logits")(x)
    outputs = keras.layers.Activation(activation or "linear", dtype="float32",
                                      name="predictions")(x)
    return keras.Model(inputs, outputs, name=name or f"{backbone.name}_classifier")


def _dropout(x, rate, name):
    return keras.layers.Dropout(rate, name=name)(x) if rate else x


def _check_head_args(num_classes, dropout, activation):
    check_choice("activation", activation, ACTIVATIONS)
    least = 2 if activation == "softmax" else 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < least:
        raise ValueError(f"`num_classes` must be an integer >= {least} with activation="
                         f"{activation!r}; received num_classes={num_classes!r}.")
    if (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
            or not 0 <= dropout < 1):
        raise ValueError(f"`dropout` must be a rate in [0, 1); received dropout={dropout!r}.")


def _check_hidden(hidden):
    units = () if hidden is None else (hidden,) if isinstance(hidden, int) else tuple(hidden)
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in units):
        raise ValueError("`hidden` must be None, an integer >= 1 or a sequence of them; "
                         f"received hidden={hidden!r}.")
    return units


def classifier_head(model):
    """The head of a `classifier` model as its own model: pooled features -> predictions.

    The head shares its layers with `model`, so training it (e.g. on cached embeddings from
    `keras_vggres.transfer.embed` with the classifier's pooling) trains the classifier's head.

    Args:
        model: a model made by `classifier` (input -> backbone -> pooling -> head layers).

    Returns:
        A `keras.Model` from `(batch, channels)` features to the classifier's predictions.
    """
    backbone, _ = find_backbone(model)
    chain = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if backbone is model or chain[0] is not backbone:
        raise ValueError(f"Model {model.name!r} is not a classifier made by "
                         "keras_vggres.transfer.classifier (input -> backbone -> head).")
    head = chain[1:]
    if head and isinstance(head[0], tuple(POOLING_LAYERS.values())):
        head = head[1:]
    head_types = (keras.layers.Dense, keras.layers.Dropout, keras.layers.Activation)
    if not head or not all(isinstance(layer, head_types) for layer in head):
        raise ValueError(f"The layers after the backbone of {model.name!r} are not a "
                         f"classifier head: {[layer.name for layer in chain[1:]]}.")
    channels = backbone.outputs[0].shape[-1]
    inputs = keras.Input(shape=(channels,), name="features")
    x = inputs
    for layer in head:
        x = layer(x)
    return keras.Model(inputs, x, name=f"{model.name}_head")


# ----------------------------------------------------------------------------- features
def feature_extractor(model, stages=None, layers=None):
    """A model returning feature maps by stage name and/or layer name, as a dict.

    A stage's feature is the output of the layer its builder recorded (`models.feature_info`),
    or for a model without the record, of the stage's last layer (every layer of a stage feeds
    it); the two agree on our models: ResNet `stem` -> `pool1_pool`, `conv{s}` ->
    `conv{s}_block{last}_out`; ResNet V2 likewise (V2 strides in the last block of
    conv2..conv4, so those outputs are already downsampled: at 224 px conv2..conv5 are 28, 14,
    7, 7; they are pre-activation sums), `post` -> `post_relu`; VGG `block{b}` ->
    `block{b}_pool`, i.e. after the max-pool (at 224 px: 112, 56, 28, 14, 7). For pre-pool VGG
    features or ReLU taps (perceptual losses) name layers: in plain VGG the ReLU is fused into
    the conv, so `block4_conv3` is the ReLU output; in VGG-BN use `block4_relu3`.

    Args:
        model: a VGG/ResNet model or a model containing one (features come from the backbone).
        stages: a stage name or a list of them (not `head`). None: the last three body stages
            (`conv3..conv5` or `block3..block5`) when `layers` is None, else none.
        layers: layer names of the backbone whose outputs to return too.

    Returns:
        A `keras.Model` on the backbone's input returning `{name: feature map}`: stage names for
        `stages`, layer names for `layers`.
    """
    backbone, _, groups = collect(model)
    valid = tuple(stage for stage, members in groups.items() if members and stage != HEAD)
    if stages is None:
        body = tuple(s for s in valid if s not in (STEM, POST))
        stages = body[-DEFAULT_TAPS:] if layers is None else ()
    stage_names = (stages,) if isinstance(stages, str) else tuple(stages)
    layer_names = (layers,) if isinstance(layers, str) else tuple(layers or ())
    for stage in stage_names:
        check_choice("stages", stage, valid)
    outputs = {stage: stage_output(backbone, groups, stage).output for stage in stage_names}
    all_names = [layer.name for layer in backbone.layers]
    for layer_name in layer_names:
        if layer_name not in all_names:
            close = difflib.get_close_matches(layer_name, all_names, n=3)
            hint = f" Did you mean {close}?" if close else ""
            raise ValueError(f"`layers` must name layers of {backbone.name!r}; received "
                             f"{layer_name!r}.{hint} Valid names: {all_names}.")
        outputs[layer_name] = backbone.get_layer(layer_name).output
    if not outputs:
        raise ValueError("`stages` and `layers` select no feature; received stages="
                         f"{stages!r}, layers={layers!r}.")
    return keras.Model(single_input(backbone.inputs), outputs, name=f"{backbone.name}_features")


def single_input(inputs):
    """A one-input model's input tensor itself (Keras warns when given a one-item list)."""
    return inputs[0] if len(inputs) == 1 else inputs


def build_classifier(model_name, weights, image_size, num_classes, dropout):
    """A registered backbone with its preprocessing inside (raw RGB 0-255 input) + a pooled
    softmax head: the model `finetune` trains."""
    from keras_vggres.registry import get_model

    backbone = get_model(model_name, include_top=False, weights=weights,
                         input_shape=(image_size, image_size, 3), include_preprocessing=True)
    return classifier(backbone, num_classes, pooling="avg", dropout=dropout,
                      name=f"{model_name}_classifier")
