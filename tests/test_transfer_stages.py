"""Stages by record or layer name (plain, round-tripped, nested) and freezing with the BN policy."""

import sys

import keras
import numpy as np
import pytest

import keras_vggres.transfer
from keras_vggres import models, registry
from keras_vggres.models import feature_info
from keras_vggres.transfer import (FreezeSummary, classifier, feature_extractor, freeze,
                                   freeze_summary, stage_layers, stages, unfreeze)
from keras_vggres.transfer.stages import (FAMILY_STAGES, HEAD, POST, STEM, _named_groups,
                                          find_backbone)

# registry name -> builder kwargs (small inputs; the VGG11BN top covers flatten/fc1/fc2)
CASES = {
    "resnet18": dict(include_top=True, classes=4, input_shape=(32, 32, 3)),
    "resnet50": dict(include_top=False, pooling="avg", input_shape=(32, 32, 3)),
    "resnet50v2": dict(include_top=False, pooling="max", input_shape=(32, 32, 3),
                       include_preprocessing=True),
    "vgg16": dict(include_top=False, pooling=None, input_shape=(32, 32, 3)),
    "vgg11_bn": dict(include_top=True, classes=3, input_shape=(32, 32, 3)),
}
# layer name -> stage, one per naming rule
KNOWN = {"resnet18": {"conv1_conv": "stem", "pool1_pool": "stem", "conv2_block1_1_conv": "conv2",
                      "conv5_block2_out": "conv5", "avg_pool": "head", "predictions": "head"},
         "resnet50v2": {"conv3_block1_preact_bn": "conv3", "post_bn": "post",
                        "post_relu": "post", "max_pool": "head"},
         "vgg11_bn": {"block1_conv1": "block1", "block4_bn2": "block4", "block5_pool": "block5",
                      "flatten": "head", "fc2": "head"}}

_BUILT = {}


def build(name):
    if name not in _BUILT:
        _BUILT[name] = registry.get_model(name, weights=None, **CASES[name])
    return _BUILT[name]


def weight_layers(model):
    """Every layer with weights, nested models flattened."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += weight_layers(layer)
        elif layer.weights:
            found.append(layer)
    return found


def check_partition(model, groups, name):
    assert tuple(groups) == registry.get_spec(name).stages
    members = [layer for group in groups.values() for layer in group]
    assert len({id(layer) for layer in members}) == len(members)        # no layer twice
    assert {id(layer) for layer in weight_layers(model)} <= {id(layer) for layer in members}
    names = {layer.name: stage for stage, group in groups.items() for layer in group}
    for layer_name, stage in KNOWN.get(name, {}).items():
        assert names[layer_name] == stage
    assert "preprocessing" not in names
    for stage in groups:
        if stage != "head":
            assert groups[stage], stage


@pytest.mark.parametrize("name", list(CASES))
def test_stages_partition_weight_layers(name):
    model = build(name)
    check_partition(model, stages(model), name)
    if CASES[name].get("pooling") is None and not CASES[name]["include_top"]:
        assert stages(model)["head"] == []


@pytest.mark.parametrize("name", list(CASES))
def test_stages_after_keras_round_trip(name, tmp_path):
    path = tmp_path / f"{name}.keras"
    build(name).save(path)
    loaded = keras.saving.load_model(path)
    check_partition(loaded, stages(loaded), name)


@pytest.mark.parametrize("name", ["resnet50v2", "vgg16"])
def test_stages_of_a_nested_backbone(name):
    backbone = build(name)
    sequential = keras.Sequential([backbone, keras.layers.Dense(2, name="new_dense")])
    groups = stages(sequential)
    check_partition(sequential, groups, name)
    assert [layer.name for layer in groups["head"]][-1] == "new_dense"

    inputs = keras.Input(CASES[name]["input_shape"])
    x = backbone(inputs)
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    wrapper = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    outer = keras.Model(inputs, keras.layers.Activation("softmax", name="prob")(wrapper(inputs)))
    groups = stages(outer)
    check_partition(outer, groups, name)
    assert [layer.name for layer in groups["head"]][-2:] == ["out", "prob"]
    assert stages(backbone)["stem" if "resnet" in name else "block1"] == groups[
        "stem" if "resnet" in name else "block1"]


def test_keras_applications_models_follow_the_same_rules():
    """keras.applications' ResNet50V2 (one auto-named weightless max-pool) splits the same way."""
    model = keras.applications.ResNet50V2(include_top=False, weights=None, pooling="max",
                                          input_shape=(32, 32, 3))
    groups = stages(model)
    check_partition(model, groups, "resnet50v2")
    ours = stages(build("resnet50v2"))
    for stage in ("stem", "conv2", "conv5", "post"):
        theirs = [layer.name for layer in groups[stage] if layer.weights]
        assert theirs == [layer.name for layer in ours[stage] if layer.weights]


def test_stage_names_come_from_the_registry():
    families = {spec.family: spec.stages for spec in registry.MODELS.values()}
    assert FAMILY_STAGES == families
    for stage_tuple in families.values():
        assert stage_tuple[-1] == HEAD
    assert STEM in families["resnet"] and POST in families["resnet_v2"]


def _names(groups):
    return {stage: [layer.name for layer in members] for stage, members in groups.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_stage_record_and_name_rules_agree(name, tmp_path):
    """Our model (its stage record) and its `.keras` reload (layer-name rules) split alike."""
    model = build(name)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert feature_info(model) is not None and feature_info(loaded) is None
    family = registry.get_spec(name).family
    assert find_backbone(model)[1] == find_backbone(loaded)[1] == family
    recorded = _names(stage_layers(model))
    assert recorded == _names(stage_layers(loaded)) == _names(_named_groups(model, family))
    assert freeze_summary(model) == freeze_summary(loaded)
    body = [stage for stage in registry.get_spec(name).stages if stage != HEAD]
    producers = [{stage: tensor._keras_history.operation.name
                  for stage, tensor in feature_extractor(m, stages=body).output.items()}
                 for m in (model, loaded)]
    assert producers[0] == producers[1]
    assert producers[0] == {s.stage: s.layer for s in feature_info(model) if s.stage != HEAD}


def test_stage_layers_is_the_new_name_of_stages():
    from keras_vggres.transfer.stages import stages as module_alias

    assert keras_vggres.transfer.stages is keras_vggres.transfer.stage_layers is stage_layers
    assert stages is module_alias is stage_layers
    assert sys.modules["keras_vggres.transfer.stages"].stage_layers is stage_layers
    assert "stage_layers" in keras_vggres.transfer.__all__


def test_unknown_model_says_which_names_were_expected():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense_x")(inputs), name="mlp")
    with pytest.raises(ValueError, match=r"block1_conv1.*conv1_conv.*dense_x"):
        stages(model)
    with pytest.raises(TypeError, match="keras.Model"):
        stages("resnet50")


def test_two_backbones_are_ambiguous():
    first = models.VGG11(include_top=False, weights=None, input_shape=(32, 32, 3), name="a")
    second = models.VGG11(include_top=False, weights=None, input_shape=(32, 32, 3), name="b")
    inputs = keras.Input((32, 32, 3))
    both = keras.Model(inputs, keras.layers.Add()([first(inputs), second(inputs)]))
    with pytest.raises(ValueError, match=r"2 VGG/ResNet backbones.*'a', 'b'"):
        stages(both)


# ----------------------------------------------------------------------------- freezing
@pytest.fixture(scope="module")
def trainer():
    """ResNet18 at 64 px with a 3-class head, a fixed batch, and a train-and-diff helper."""
    backbone = models.ResNet18(include_top=False, weights=None, input_shape=(64, 64, 3))
    model = classifier(backbone, 3, dropout=0.0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4, 64, 64, 3)).astype("float32")
    y = np.array([0, 1, 2, 1])
    owner = {id(v): (stage, layer) for stage, group in stages(model).items()
             for layer in group for v in layer.weights}

    def train(steps=2):
        """Compile, train `steps` batches; return {(stage, layer name, var name): changed}."""
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
        before = [v.numpy() for v in model.weights]
        for _ in range(steps):
            model.train_on_batch(x, y)
        changed = {}
        for variable, old in zip(model.weights, before):
            stage, layer = owner[id(variable)]
            changed[stage, layer.name, variable.name] = not np.array_equal(old, variable.numpy())
        return changed

    return model, train


def _changed(changed, stage, *, bn, moving=None):
    """Changed flags of one stage's BN (optionally moving stats only) or non-BN variables."""
    is_bn = lambda layer_name: layer_name.endswith("_bn")  # noqa: E731
    flags = [flag for (s, layer_name, var_name), flag in changed.items()
             if s == stage and is_bn(layer_name) == bn
             and (moving is None or var_name.startswith("moving_") == moving)]
    assert flags, (stage, bn, moving)
    return flags


def test_freeze_up_to_keeps_frozen_variables_bitwise(trainer):
    model, train = trainer
    summary = freeze(model, up_to="conv4")
    assert isinstance(summary, FreezeSummary)
    changed = train()
    for stage in ("stem", "conv2", "conv3", "conv4"):
        assert not any(_changed(changed, stage, bn=False))
        assert not any(_changed(changed, stage, bn=True))    # moving stats included
    assert all(_changed(changed, "conv5", bn=False))           # conv kernels train
    assert not any(_changed(changed, "conv5", bn=True))        # bn="frozen": BN untouched
    assert all(flag for (stage, *_), flag in changed.items() if stage == "head")


def test_unfreeze_with_bn_frozen_then_bn_train(trainer):
    model, train = trainer
    freeze(model, up_to="conv4")
    unfreeze(model, ["conv4"])
    changed = train()
    assert all(_changed(changed, "conv4", bn=False))
    assert not any(_changed(changed, "conv4", bn=True))        # statistics and gamma/beta
    assert not any(_changed(changed, "conv3", bn=False))

    summary = unfreeze(model, "conv4", bn="train")
    changed = train()
    assert all(_changed(changed, "conv4", bn=True, moving=True))
    assert all(_changed(changed, "conv5", bn=True, moving=True))
    assert not any(_changed(changed, "conv3", bn=True))
    assert summary.bn["conv4"] == "train" and summary.bn["conv3"] == "frozen"


def test_freeze_summary_counts_and_table(trainer):
    model, _ = trainer
    summary = freeze(model, stages=["stem", "conv2"], bn="frozen")
    assert summary.total_trainable + summary.total_frozen == model.count_params()
    assert summary.total_trainable == sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert summary.trainable["stem"] == 0 and summary.trainable["head"] > 0
    as_dict = summary.as_dict()
    assert as_dict["stages"]["conv2"]["trainable"] == 0 and as_dict["model"] == model.name
    text = str(summary)
    for stage in registry.get_spec("resnet18").stages:
        assert stage in text
    assert freeze_summary(model) == summary
    unfreeze(model)
    assert freeze_summary(model).trainable["stem"] > 0


def test_freeze_stages_leaves_other_stages_alone(trainer):
    model, _ = trainer
    freeze(model, up_to="conv3")
    summary = freeze(model, stages="conv5")
    assert summary.trainable["conv3"] == 0 and summary.trainable["conv5"] == 0
    assert summary.trainable["conv4"] > 0 and summary.trainable["head"] > 0
    summary = freeze(model, up_to="head")
    assert summary.total_trainable == 0 and model.trainable_weights == []


def test_unfreeze_opens_frozen_containers():
    backbone = models.ResNet18(include_top=False, weights=None, input_shape=(32, 32, 3))
    model = keras.Sequential([backbone, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2)])
    model.trainable = False
    assert model.trainable_weights == []
    summary = unfreeze(model, ["conv5", "head"])
    assert backbone.trainable and model.trainable
    names = {v.path.split("/")[-2] for v in model.trainable_weights}
    assert "conv5_block2_2_conv" in names and "conv4_block2_2_conv" not in names
    assert summary.trainable["conv4"] == 0 and summary.trainable["head"] > 0
    assert summary.bn["conv5"] == "frozen"


def test_freeze_bad_arguments():
    model = build("vgg16")
    with pytest.raises(ValueError, match="exactly one of `up_to` or `stages`"):
        freeze(model)
    with pytest.raises(ValueError, match="exactly one"):
        freeze(model, up_to="block2", stages=["block1"])
    with pytest.raises(ValueError, match=r"`up_to` must be one of \('block1'.*'head'\).*conv4"):
        freeze(model, up_to="conv4")
    with pytest.raises(ValueError, match=r"`stages` must name stages.*block1.*received"):
        unfreeze(model, ["block9"])
    with pytest.raises(ValueError, match=r"`bn` must be one of \('frozen', 'train'\)"):
        freeze(model, up_to="block2", bn="inference")
